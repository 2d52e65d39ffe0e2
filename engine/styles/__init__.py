"""Approved styles: stylized generators frozen as named, versioned styles for production (:mod:`.library`),
and what production checks before it uses one (:mod:`.production`)."""
