"""Domain operations: plain functions ``op(tx, ...)`` run by a Store in one transaction.

They hold the rules (who may see what, state transitions, sequence numbers); the
store only decides how a transaction is run.
"""
