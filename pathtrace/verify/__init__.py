"""`pathtrace verify`: replay the same frames through the model and through a real kernel.

The kernel side builds the host in throw-away network namespaces (pathtrace.verify.lab),
watches drops with the skb:kfree_skb tracepoint (tracing) and frames on the wire
(observe); compare puts both side by side.  Nothing here changes the model.
"""
