"""Domain tags: one per kind of signed thing.

A signature always covers ``[tag, *fields]``; a tag never changes meaning.
A new format gets a new tag (``/v2``), never a reinterpretation of an old one.
"""

RPC = "workmesh/rpc/v1"
# Record format v1 signed each fact under its kind's tag. Retired by v2 (a
# fact's kind is in the content a batch signature covers, BATCH below); the
# names stay so that no tag is ever given another meaning.
SUBMIT = "workmesh/submit/v1"
CLAIM = "workmesh/claim/v1"
RENEW = "workmesh/renew/v1"
GRANT = "workmesh/grant/v1"
RESULT = "workmesh/result/v1"
CANCEL = "workmesh/cancel/v1"
BALLOT = "workmesh/ballot/v1"
CONFIG = "workmesh/config/v1"
# Record format v2: one signature over the Merkle root of the facts one
# author signed together (node/facts.py); the kinds above are in the facts.
BATCH = "workmesh/batch/v2"

ALL = frozenset({RPC, SUBMIT, CLAIM, RENEW, GRANT, RESULT, CANCEL, BALLOT, CONFIG, BATCH})
