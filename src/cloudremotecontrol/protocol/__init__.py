"""Wire protocol and state logic, free of I/O (no sockets, no files, no asyncio).

Server and agent are thin shells around what is here, so everything here is tested
exhaustively without a network.
"""
