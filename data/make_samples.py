#!/usr/bin/env python3
"""Synthesise the sample podcast catalogue in data/ (offline, deterministic).

    python3 data/make_samples.py

Needs only python3 (stdlib) plus the `espeak-ng` and `ffmpeg` executables. It writes

    data/audio/GDR-00N.mp3            mono 16 kHz MP3 (32 kbps), one per episode
    data/episodes.json                the episode catalogue the pipeline ingests
    data/samples/GDR-00N.script.json  ground truth: every turn's speaker, text and start/end seconds
    tests/search_questions.json       search questions, each pointing at the turn that answers it

Episodes 1-4 are dialogues between two or three speakers with clearly different espeak-ng voices
(American male ~97 Hz, British female ~235 Hz, low British male ~77 Hz); episode 5 (not in the catalogue)
has five men of similar pitch, for the speaker-accuracy test. Speaker "0" in each
speakers_map is whoever speaks first, "1" the second distinct voice, and so on, so a diarizer that
numbers speakers by first appearance lines up with the map.

Turn text may contain `{written|spoken}` pairs: the written form goes into the ground truth (what a
transcriber should ideally print, e.g. "1947"), the spoken form is what espeak-ng is given (it reads
"1947" as "nineteen hundred forty seven" otherwise).

Timestamps are measured from the synthesised samples themselves (each turn is trimmed to its speech
with a 20 ms margin), not estimated, and the MP3 is written with its LAME gapless header so decoders
that honour it (ffmpeg/PyAV, hence faster-whisper) line up with them to the millisecond.
"""

from __future__ import annotations

import array
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

DATA = Path(__file__).resolve().parent
ROOT = DATA.parent
AUDIO_DIR = DATA / "audio"
SAMPLES_DIR = DATA / "samples"
EPISODES_FILE = DATA / "episodes.json"
QUESTIONS_FILE = ROOT / "tests" / "search_questions.json"

SAMPLE_RATE = 16000
BITRATE = "32k"
LEAD_SILENCE = 0.50  # seconds before the first turn
TAIL_SILENCE = 0.50  # seconds after the last turn
GAP_RANGE = (0.30, 0.50)  # silence between turns, drawn per gap from a seeded RNG
TRIM_THRESHOLD = 200  # |sample| above this (of 32767, about -44 dBFS) counts as speech when trimming
TRIM_MARGIN = 0.020  # seconds kept either side of the detected speech
PEAK = 0.80 * 32767  # every turn is peak-normalised to this level

# ---------------------------------------------------------------------------------------------
# Voices. NB espeak-ng 1.51 silently ignores a "+variant" on "en-gb" ("en-gb+f3" sounds exactly
# like plain "en-gb"); "en+f3" is the same British English voice with the variant applied.
# ---------------------------------------------------------------------------------------------
SPEAKERS = {
    "Daniel Okafor": {"voice": "en-us", "pitch": 45, "speed": 165, "description": "American English, male, ~97 Hz"},
    "Priya Raman": {"voice": "en+f2", "pitch": 70, "speed": 160, "description": "British English, female (f2), ~235 Hz"},
    "Marcus Baird": {"voice": "en-gb-x-rp+m1", "pitch": 20, "speed": 150, "description": "British RP English, low male (m1), ~77 Hz"},
    # GDR-005's five men: pitches within ~3 semitones of each other (86-100 Hz), so only timbre tells them apart.
    # Picked among espeak-ng's male variants as the five least alike to a speaker-embedding model.
    "Tomas Reed": {"voice": "en-us", "pitch": 40, "speed": 165, "description": "American English, male, ~93 Hz"},
    "Owen Pike": {"voice": "en+Andy", "pitch": 40, "speed": 155, "description": "English, male (Andy), ~86 Hz"},
    "Samir Haddad": {"voice": "en+Denis", "pitch": 40, "speed": 160, "description": "English, male (Denis), ~90 Hz"},
    "Felix Marsh": {"voice": "en+klatt", "pitch": 40, "speed": 150, "description": "English, male (klatt), ~95 Hz"},
    "Jonah Wells": {"voice": "en+m7", "pitch": 40, "speed": 160, "description": "English, male (m7), ~100 Hz"},
}

D, P, M = "Daniel Okafor", "Priya Raman", "Marcus Baird"
T, O, S, F, J = "Tomas Reed", "Owen Pike", "Samir Haddad", "Felix Marsh", "Jonah Wells"

EPISODES = [
    {
        "episode_id": 1,
        "file_name": "GDR-001.mp3",
        "title": "Bees on the Roof: Urban Beekeeping and Pollinator Decline",
        "published": "2025-01-15",
        "turns": [
            (D, "Welcome back. I'm Daniel Okafor, and this week my co-host Priya Raman has been keeping bees on a roof in east London. Priya, how did that start?"),
            (P, "A friend had two hives above an old printing works in Hackney, and she needed help with the inspections. By July each colony had about fifty thousand bees in it."),
            (D, "Right."),
            (P, "What surprised me is how far they travel. A honeybee will happily forage three kilometres from the hive, so our July honey tasted of the lime trees in Victoria Park."),
            (D, "Let's get to the part everyone asks about. Are the bees actually in trouble?"),
            (P, "Honeybees as a species are fine, they are managed livestock. The losses people remember began with colony collapse disorder, reported by American beekeepers in the winter of {2006|two thousand six}, when hives were found with a queen and honey but almost no workers."),
            (D, "And the main suspect now is a mite, isn't it?"),
            (P, "Varroa destructor. It is a parasitic mite that feeds on the developing bees and spreads deformed wing virus. We did a sugar roll test every month to count them."),
            (D, "Yeah. And the pesticides?"),
            (P, "The big fight was over neonicotinoids. The European Union restricted three of them in {2013|twenty thirteen}, and banned their outdoor use in {2018|twenty eighteen}, because they impair the bees' navigation."),
            (D, "Here's where I push back. If honeybees are livestock, is putting hives on every roof actually helping wildlife?"),
            (P, "Honestly, probably not. Britain has around two hundred and seventy bee species, and almost all of them are wild. Some ecologists argue that central London now has too many hives, and that honeybees outcompete the wild bees for pollen."),
            (D, "In America the poster child is the rusty patched bumblebee. In {2017|twenty seventeen} it became the first bumblebee listed as endangered under the Endangered Species Act."),
            (P, "Right, and what helps that bee is flowers and nesting sites, not another hive. So plant things, mow less, and join No Mow May."),
            (D, "Lovely. Next week, the transistor."),
        ],
    },
    {
        "episode_id": 2,
        "file_name": "GDR-002.mp3",
        "title": "Murray Hill, 1947: The Transistor and Bell Labs",
        "published": "2025-01-22",
        "turns": [
            (P, "This week Daniel has promised me the story of the transistor."),
            (D, "It starts at Bell Labs in Murray Hill, New Jersey. On {December 23, 1947|December twenty third, nineteen forty seven}, John Bardeen and Walter Brattain showed the management their point-contact transistor: a slab of germanium, a plastic wedge, and two gold foil contacts a fraction of a millimetre apart."),
            (P, "And why did the phone company care?"),
            (D, "Because the telephone network ran on vacuum tubes, which were hot and fragile and burned out. For scale, the ENIAC computer used about seventeen and a half thousand of them."),
            (P, "Right."),
            (D, "The group was led by William Shockley, who was furious that his name was not on the patent. Within weeks he worked out the junction transistor on his own, the sandwich design that could actually be manufactured."),
            (P, "And the name itself?"),
            (D, "John Pierce, an engineer at the lab, coined it. It was meant as a short form of transfer resistor. Bell announced it in {June 1948|June nineteen forty eight}, and the New York Times buried the story on page forty six."),
            (P, "Yeah. So how did it get out of Bell Labs?"),
            (D, "Antitrust pressure. {AT&T|A T and T} licensed the patent for a {$25,000|twenty five thousand dollar} advance on royalties. One licensee was a small firm in Dallas called Texas Instruments, and in {1954|nineteen fifty four} the Regency TR-1 radio went on sale with four of their transistors inside."),
            (P, "And what happened to Shockley?"),
            (D, "He started Shockley Semiconductor in Mountain View in {1956|nineteen fifty six}, the year the three of them shared the Nobel Prize in Physics. He was such a difficult manager that eight of his researchers quit and founded Fairchild Semiconductor. Two of that traitorous eight, Robert Noyce and Gordon Moore, later founded Intel."),
            (P, "So Silicon Valley exists partly because one man was impossible to work for."),
            (D, "That's the uncomfortable version, yes."),
        ],
    },
    {
        "episode_id": 3,
        "file_name": "GDR-003.mp3",
        "title": "Sourdough: Wild Yeast, Lactic Acid and Gluten",
        "published": "2025-01-29",
        "turns": [
            (P, "Today's guest, Marcus Baird, runs a small bakery in Edinburgh and has kept the same sourdough starter alive for twelve years. Marcus, what is living in that jar?"),
            (M, "Wild yeasts and lactic acid bacteria. The classic bacterium is Lactobacillus sanfranciscensis, named after San Francisco sourdough."),
            (D, "And they don't compete with each other?"),
            (M, "Mostly they don't fight over the same sugar. That bacterium loves maltose, and its usual yeast partner, Kazachstania humilis, cannot use maltose at all. Meanwhile the bacteria make lactic and acetic acid, the pH drops below four, and most other microbes give up."),
            (P, "So the sourness is a kind of security system."),
            (M, "Exactly."),
            (P, "Let's talk about gluten, because people are very confused about it."),
            (M, "Flour has two proteins, gliadin and glutenin. Add water and they link up into a stretchy network that traps the carbon dioxide from the yeast. Gliadin gives the dough extensibility, and glutenin gives it elasticity."),
            (D, "And the trick where you mix the flour and water and just walk away?"),
            (M, "That's the autolyse. A French professor, Raymond Calvel, popularised it in the {1970s|nineteen seventies}. You rest the flour and water for twenty or thirty minutes before adding the starter and salt, and the gluten forms without kneading."),
            (D, "Here's the question I get from listeners. Is sourdough safe for people who can't eat gluten?"),
            (M, "If you have coeliac disease, no. It's still wheat. What a long fermentation does do is break down a lot of the fructans, the fermentable carbohydrates, which is why some people with irritable bowel syndrome find sourdough easier to digest."),
            (P, "Yeah. Marcus Baird, thank you."),
        ],
    },
    {
        "episode_id": 4,
        "file_name": "GDR-004.mp3",
        "title": "Who Pays? The Economics of Carbon Taxes",
        "published": "2025-02-05",
        "turns": [
            (D, "Today's disagreement is carbon taxes. Priya thinks they're the best climate policy economists have ever designed. I think they're a political dead end."),
            (P, "The idea is a hundred years old. In {1920|nineteen twenty}, in The Economics of Welfare, Arthur Pigou argued that when an activity harms people outside the deal, you should tax it by the size of the harm. Economists still call that a Pigouvian tax."),
            (D, "And the harm from a tonne of carbon dioxide is what, exactly?"),
            (P, "That's the social cost of carbon. In {2023|twenty twenty three} the Environmental Protection Agency in the United States put it at about one hundred and ninety dollars a tonne."),
            (D, "Right, but nobody charges anything like that."),
            (P, "Sweden comes closest. It introduced a carbon tax in {1991|nineteen ninety one}, the rate is now well over a hundred dollars a tonne, and its economy kept growing while emissions fell."),
            (D, "My problem is the politics. In France a planned rise in the fuel tax set off the yellow vest protests in {2018|twenty eighteen}, and the government backed down."),
            (P, "Which is why the design matters. Return the money as an equal dividend per person, and most lower income households come out ahead, because they burn less fuel in total."),
            (D, "Yeah, fee and dividend. Didn't a lot of economists sign something about that?"),
            (P, "In {2019|twenty nineteen} more than three thousand economists, including twenty seven Nobel laureates, signed a statement backing a carbon tax with the revenue returned as dividends."),
            (D, "And British Columbia ran a revenue neutral version from {2008|two thousand eight}, starting at ten Canadian dollars a tonne. Then in {2025|twenty twenty five} the province scrapped the consumer carbon tax anyway."),
            (P, "Because the rebates were invisible. People saw the price at the pump, but they never noticed the tax cuts."),
            (D, "So my dead end isn't economics, it's visibility."),
            (P, "And trade. Under Europe's carbon border adjustment mechanism, importers of steel, cement and aluminium have to report the carbon in their goods, and soon pay for it."),
            (D, "We'll disagree about that one next week."),
        ],
    },
    {
        # Not in the default catalogue (`make run` stays at four episodes): the speaker-accuracy test and the
        # retrieval evaluation read it directly. Five men of similar pitch, the host speaking most.
        "episode_id": 5,
        "file_name": "GDR-005.mp3",
        "title": "Finding Longitude: Harrison's Clocks and the Board of Longitude",
        "published": "2025-02-12",
        "catalogue": False,
        "turns": [
            (T, "Welcome to a crowded studio. I'm Tomas Reed. Before my guests join in, a little scene setting. In the early seventeen hundreds a ship out of sight of land knew its latitude well, but its east west position was a guess made by dead reckoning: speed, heading and hours sailed, chalked on a slate every watch and added up. Errors of a hundred miles were ordinary. Today four guests will help me with one of the great engineering problems of the eighteenth century: how a ship finds its longitude at sea."),
            (O, "Thanks, Tomas. I'm Owen Pike, I repair old clocks in Bristol."),
            (T, "Owen, why was longitude so hard when latitude was easy?"),
            (O, "Latitude you can read from the sky, from the height of the sun at noon or of the pole star. Longitude is a matter of time. The earth turns fifteen degrees an hour, so if you know the time at home and the local time on deck, the difference gives your longitude. The trouble was keeping home time on a rolling ship."),
            (T, "And people died of that trouble. Navigators who got it wrong ran aground, or sailed past the island where they meant to take on fresh water while scurvy spread through the crew."),
            (S, "Very many. I'm Samir Haddad, a naval historian. In {1707|seventeen oh seven} a fleet under Admiral Cloudesley Shovell misjudged its position and ran onto the rocks of the Scilly Isles. Four ships were lost and about fifteen hundred sailors drowned in one night."),
            (T, "So Parliament offered money. This is the part of the story I love, because it was one of the first public prizes for a technical problem, centuries before anyone had heard of an X Prize."),
            (S, "The Longitude Act of {1714|seventeen fourteen} promised twenty thousand pounds for a method accurate to half a degree, judged by a trial voyage to the West Indies. A Board of Longitude was set up to decide who had won."),
            (T, "Felix, you are our astronomer. What did the astronomers propose?"),
            (F, "The lunar distance method. The moon moves against the stars about its own width every hour, so with tables of its position you can read the time at Greenwich from the sky itself. Nevil Maskelyne, who became Astronomer Royal, published those tables in the Nautical Almanac from {1767|seventeen sixty seven}."),
            (T, "That is clever, but it needs a steady hand, clear skies and a great deal of arithmetic. And the clockmaker's answer?"),
            (O, "John Harrison, a carpenter from Lincolnshire. He built wooden clocks that needed no oil, and then four marine timekeepers. The first three were big brass machines. The fourth, called H4, looks like a large pocket watch, about thirteen centimetres across."),
            (T, "Did it work?"),
            (O, "On the trial voyage to Jamaica in {1761|seventeen sixty one} it lost only about five seconds in eighty one days."),
            (T, "Jonah, you've written about the prize itself. Why did Harrison struggle to get paid?"),
            (J, "Because the Board kept moving the goalposts. They wanted the design disclosed, copies made, and more trials. Maskelyne sat on the Board and had his own method to promote. Harrison was finally paid most of the money in {1773|seventeen seventy three}, after King George the Third took his side and Parliament voted him a reward."),
            (T, "So in the end the king settled it, which says something about how science was judged in those days: by committees, patrons and politics as much as by the results of a voyage."),
            (J, "He tested a Harrison watch himself at his private observatory in Richmond, and declared he would see Harrison righted."),
            (T, "Felix, were the astronomers simply wrong then?"),
            (F, "Not at all. A good chronometer cost about a third of the price of the ship it sailed on, so for decades most navigators used lunar distances, which needed only a sextant, an almanac and an hour of arithmetic."),
            (T, "It reminds me that a good technology can lose for a long time to a cheap one that is good enough. When did clocks win in the end?"),
            (S, "In the nineteenth century. Larcum Kendall copied H4 for the navy, Captain Cook took that copy on his second voyage and called it his trusty friend, and by the {1850s|eighteen fifties} chronometers were cheap enough that every navy ship carried two or three."),
            (T, "Felix, do navigators still learn the sky?"),
            (F, "Some navies teach celestial navigation again, as a backup in case satellite signals are jammed or spoofed."),
            (T, "Jonah, a last word on Greenwich?"),
            (J, "In {1884|eighteen eighty four} the International Meridian Conference in Washington chose the line through Greenwich as zero degrees, largely because most of the world's sea charts already used it."),
            (T, "Owen, Samir, Felix, Jonah, thank you all. And next time someone tells you that satellites made navigation easy, remember that it is still a clock problem: every navigation satellite carries atomic clocks, and your phone works out where it is from tiny differences in time."),
        ],
    },
]

# Each question is answered by exactly one turn: the one in `episode_id` containing `expect_text`.
QUESTIONS = [
    ("Which parasite spreads deformed wing virus in honeybee hives?", 1, "a parasitic mite"),
    ("Are rooftop honeybee hives in cities actually good for wild bees?", 1, "too many hives"),
    ("When was the rusty patched bumblebee put on the endangered species list?", 1, "the rusty patched bumblebee"),
    ("Who coined the word transistor and what is it short for?", 2, "an engineer at the lab"),
    ("How much did AT&T charge other companies for a licence to the transistor patent?", 2, "advance on royalties"),
    ("Which company did the eight researchers who quit Shockley's lab go on to found?", 2, "later founded Intel"),
    ("Why don't the yeast and the bacteria in a starter fight over sugar?", 3, "cannot use maltose at all"),
    ("What is the autolyse technique and who made it popular?", 3, "before adding the starter"),
    ("Why do some people with IBS tolerate sourdough better than ordinary bread?", 3, "find sourdough easier to digest"),
    ("Where does the idea of a Pigouvian tax come from?", 4, "The Economics of Welfare"),
    ("What happened to British Columbia's carbon tax?", 4, "the consumer carbon tax"),
    ("What design of carbon tax leaves lower income families better off?", 4, "return the money"),
]

MARKUP = re.compile(r"\{([^{}|]*)\|([^{}]*)\}")


def written(text: str) -> str:
    return MARKUP.sub(lambda m: m.group(1), text)


def spoken(text: str) -> str:
    return MARKUP.sub(lambda m: m.group(2), text)


def run(cmd: list[str], stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(cmd, input=stdin, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode(errors='replace')}")
    return proc.stdout


FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
BITEXACT = ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact"]


def synthesise(text: str, speaker: str, workdir: Path) -> array.array:
    """One turn as 16 kHz mono int16 samples, trimmed to its speech and peak-normalised."""
    voice = SPEAKERS[speaker]
    raw, pcm = workdir / "turn.wav", workdir / "turn16k.wav"
    run(["espeak-ng", "-v", voice["voice"], "-p", str(voice["pitch"]), "-s", str(voice["speed"]), "-w", str(raw), "--stdin"],
        stdin=spoken(text).encode("utf-8"))
    run(FFMPEG + ["-i", str(raw), "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", *BITEXACT, str(pcm)])
    with wave.open(str(pcm), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
        samples = array.array("h", w.readframes(w.getnframes()))
    if sys.byteorder == "big":
        samples.byteswap()
    loud = [i for i, s in enumerate(samples) if abs(s) > TRIM_THRESHOLD]
    if not loud:
        sys.exit(f"espeak-ng produced silence for: {text!r}")
    margin = int(TRIM_MARGIN * SAMPLE_RATE)
    samples = samples[max(0, loud[0] - margin): min(len(samples), loud[-1] + 1 + margin)]
    peak = max(abs(s) for s in samples)
    gain = PEAK / peak
    return array.array("h", (max(-32768, min(32767, round(s * gain))) for s in samples))


def build_episode(ep: dict, workdir: Path) -> dict:
    stem = Path(ep["file_name"]).stem
    rng = random.Random(f"gdr-samples:{stem}")
    order: list[str] = []  # speakers by first appearance: index = diarizer's speaker number
    for speaker, _ in ep["turns"]:
        if speaker not in order:
            order.append(speaker)
    prev = None
    for speaker, _ in ep["turns"]:
        if speaker == prev:
            sys.exit(f"{stem}: two consecutive turns by {speaker}; merge them")
        prev = speaker

    audio = array.array("h", bytes(2 * int(LEAD_SILENCE * SAMPLE_RATE)))
    turns = []
    for i, (speaker, text) in enumerate(ep["turns"]):
        if i:
            gap = round(rng.uniform(*GAP_RANGE), 2)
            audio.extend(bytes(2 * int(gap * SAMPLE_RATE)))
        start = len(audio)
        audio.extend(synthesise(text, speaker, workdir))
        turns.append({
            "index": i,
            "speaker": order.index(speaker),
            "speaker_name": speaker,
            "text": written(text),
            "spoken": spoken(text),
            "start": round(start / SAMPLE_RATE, 3),
            "end": round(len(audio) / SAMPLE_RATE, 3),
        })
    audio.extend(bytes(2 * int(TAIL_SILENCE * SAMPLE_RATE)))

    pcm = workdir / f"{stem}.wav"
    with wave.open(str(pcm), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        data = audio if sys.byteorder == "little" else array.array("h", audio)
        if sys.byteorder == "big":
            data.byteswap()
        w.writeframes(data.tobytes())
    out = AUDIO_DIR / ep["file_name"]
    run(FFMPEG + ["-i", str(pcm), *BITEXACT, "-ac", "1", "-ar", str(SAMPLE_RATE),
                  "-c:a", "libmp3lame", "-b:a", BITRATE, "-id3v2_version", "0", "-write_xing", "1", str(out)])

    speakers_map = {str(i): name for i, name in enumerate(order)}
    return {
        "episode_id": ep["episode_id"],
        "file_name": ep["file_name"],
        "title": ep["title"],
        "published": ep["published"],
        "duration": round(len(audio) / SAMPLE_RATE, 3),
        "sample_rate": SAMPLE_RATE,
        "speakers_map": speakers_map,
        "voices": {str(i): {"name": name, **SPEAKERS[name]} for i, name in enumerate(order)},
        "turns": turns,
    }


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    for tool in ("espeak-ng", "ffmpeg"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found on PATH (Debian/Ubuntu: apt-get install espeak-ng ffmpeg)")
    AUDIO_DIR.mkdir(parents=True, exist_ok=True)
    scripts = []
    with tempfile.TemporaryDirectory(prefix="gdr-samples-") as tmp:
        for ep in EPISODES:
            script = build_episode(ep, Path(tmp))
            stem = Path(ep["file_name"]).stem
            write_json(SAMPLES_DIR / f"{stem}.script.json", script)
            scripts.append(script)
            size = (AUDIO_DIR / ep["file_name"]).stat().st_size
            print(f"{ep['file_name']}: {script['duration']:.1f} s, {len(script['turns'])} turns, "
                  f"{len(script['speakers_map'])} speakers, {size / 1024:.0f} KiB")

    catalogued = {ep["episode_id"] for ep in EPISODES if ep.get("catalogue", True)}
    write_json(EPISODES_FILE, [
        {"episode_id": s["episode_id"], "file_name": s["file_name"], "title": s["title"],
         "published": s["published"], "speakers_map": s["speakers_map"], "processed": False}
        for s in scripts if s["episode_id"] in catalogued
    ])

    by_id = {s["episode_id"]: s for s in scripts}
    questions = []
    for question, episode_id, expect in QUESTIONS:
        hits = [t for t in by_id[episode_id]["turns"] if expect.lower() in t["text"].lower()]
        if len(hits) != 1:
            sys.exit(f"question {question!r}: {expect!r} matches {len(hits)} turns of episode {episode_id}, need exactly 1")
        turn = hits[0]
        questions.append({"question": question, "episode_id": episode_id, "speaker": turn["speaker_name"],
                          "expect_text": expect, "start": turn["start"], "end": turn["end"]})
    write_json(QUESTIONS_FILE, questions)
    total = sum((AUDIO_DIR / s["file_name"]).stat().st_size for s in scripts)
    print(f"wrote {EPISODES_FILE.relative_to(ROOT)}, {len(scripts)} scripts, {len(questions)} questions; audio total {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
