"""Where episodes come from: the user's episodes.json catalogue and podcast RSS feeds."""
