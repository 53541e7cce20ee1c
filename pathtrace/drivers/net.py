"""Per-driver receive and transmit function names (drivers/net/*).

Only the names differ between drivers in this model: what each driver's rx path
hands to the core (napi_gro_receive, or __netif_rx for veth and loopback) and its
ndo_start_xmit.  Functions of modules not loaded on the machine that checks the
names are listed in tests/kernel_symbols_inline.txt.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DriverOps:
    rx: tuple[str, ...]          # driver functions before the core receive path
    napi: bool                   # hands packets to napi_gro_receive (else __netif_rx / backlog)
    xmit: str                    # ndo_start_xmit
    qdisc: str                   # default root qdisc (noqueue for virtual devices)
    partial_csum: bool = False   # hands over the sender's skb: a CHECKSUM_PARTIAL packet stays one


DRIVERS: dict[str, DriverOps] = {
    "e1000e": DriverOps(("e1000_intr_msi", "e1000e_poll", "e1000_clean_rx_irq", "e1000_receive_skb"), True,
                        "e1000_xmit_frame", "pfifo_fast"),
    "e1000": DriverOps(("e1000_intr", "e1000_clean", "e1000_clean_rx_irq", "e1000_receive_skb"), True,
                       "e1000_xmit_frame", "pfifo_fast"),
    "igb": DriverOps(("igb_msix_ring", "igb_poll", "igb_clean_rx_irq"), True, "igb_xmit_frame", "mq"),
    "ixgbe": DriverOps(("ixgbe_msix_clean_rings", "ixgbe_poll", "ixgbe_clean_rx_irq", "ixgbe_rx_skb"), True,
                       "ixgbe_xmit_frame", "mq"),
    "virtio_net": DriverOps(("skb_recv_done", "virtnet_poll", "virtnet_receive", "receive_buf"), True,
                            "start_xmit", "pfifo_fast"),
    "mlx5_core": DriverOps(("mlx5e_napi_poll", "mlx5e_poll_rx_cq", "mlx5e_handle_rx_cqe"), True,
                           "mlx5e_xmit", "mq"),
    "bnxt_en": DriverOps(("bnxt_msix", "bnxt_poll", "bnxt_rx_pkt"), True, "bnxt_start_xmit", "mq"),
    "tg3": DriverOps(("tg3_msi", "tg3_poll", "tg3_rx"), True, "tg3_start_xmit", "pfifo_fast"),
    "r8169": DriverOps(("rtl8169_interrupt", "rtl8169_poll", "rtl_rx"), True, "rtl8169_start_xmit", "pfifo_fast"),
    "veth": DriverOps(("veth_xmit", "veth_forward_skb", "__netif_rx"), False, "veth_xmit", "noqueue", True),
    "loopback": DriverOps(("loopback_xmit", "__netif_rx"), False, "loopback_xmit", "noqueue", True),
}


def driver_ops(name: str) -> DriverOps:
    return DRIVERS[name]
