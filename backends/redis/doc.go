// Package redis compacts Papyra's RedisStreamsPersistence: New(Config)
// returns a Streams backend that trims Papyra's three streams by the
// retention with XTRIM in bounded steps, respects consumer groups, holds a
// lock key while it trims (lock.go), and scans entries for anomalies with
// the record classification of backends/ndjson. The go-redis client is
// imported as goredis throughout.
package redis
