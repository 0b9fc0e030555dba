"""The workmesh DHT: Kademlia routing (from the ``kademlia`` package, fixed
where it is wrong), a signed RPC envelope, and per-key sets of signed records
stored on the ``r`` closest nodes with a write quorum and read repair."""
