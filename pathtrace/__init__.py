"""pathtrace: replay captures through a model of the Linux 6.x IPv4 stack and show each packet's path."""
__version__ = "0.1.0"
