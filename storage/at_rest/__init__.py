"""Encryption at rest: what a copied database or disk shows of the stored messages and the
device directory.

* `master_key`: the master key that wraps every other key (a local key file; the
  `KeyWrapper` interface is where a KMS plugs in).
* `keyring`: the unwrapped keys a node holds: data keys (one active) and the index key.
* `sealing`: a stored envelope's sender, nonce, type, timestamp and body sealed together
  with a data key, bound to its recipient, id and key id.
* `blinded`: the store seen through the index key: user ids and nonces are keyed hashes in
  every table, and the requester of a bundle is sealed.
* `vault`: loads, creates and rotates the data keys kept (wrapped) in the store.
"""
