"""Reading a message: parse the raw bytes, decode headers and parts, classify it.

Pure functions over bytes; nothing here imports the rest of ticketgate.
"""
