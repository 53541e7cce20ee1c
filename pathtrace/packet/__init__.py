"""Packet bytes: crafting (build), one-line decoding (decode) and pcap output (pcapwriter)."""
