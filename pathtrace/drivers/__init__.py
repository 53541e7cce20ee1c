"""NIC drivers: the driver-specific functions a packet passes on receive and transmit."""
