"""Trace rendering: text, JSON lines, tables and pcap.  Renderers format; they never decide."""
