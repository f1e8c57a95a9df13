"""What moves a node's messages: the Runtime protocol and its memory, p2p and redis runtimes."""
