"""What crosses the wire between client and workers: the versioned models (:mod:`.models`),
their encoding and signing (:mod:`.codec`) and the only S3 key layout (:mod:`.keys`)."""
