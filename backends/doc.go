// Package backends holds the storage side of the watcher: one small
// interface, Backend, implemented by every kind of Papyra persistence the
// watcher can compact (json, rotating, redis, memory), and the retention
// rules they all apply.
//
// Backends are the last stage of the pipeline triggers → policy → executor →
// backends. They know nothing about why a compaction runs; they are handed
// CompactOptions and give back a Report.
//
// # Package map
//
// This package keeps only what every kind shares: Backend, CompactOptions,
// Report, Stat, Anomaly and Dropped, the Retention and its Cut (the one
// implementation of the retention rules), the reclaimable-space Estimate
// (Estimator, NewEstimator, EstimatorSource), ErrLinked and RetryBusy for
// backup snapshots (the file kinds implement snapshot.Holder), the Kind* and Method* names and the sentinel errors.
// Each kind lives in a package of its own, beside two packages of shared
// machinery; dependencies only run downward:
//
//	backends/jsonfile  one NDJSON file (Papyra's JsonFilePersistence)
//	backends/rotating  a rotating set of NDJSON files (RotatingFilePersistence)
//	backends/redis     Redis streams (RedisStreamsPersistence)
//	backends/memory    in-process storage: nothing to compact
//	backends/ndjson    Papyra's NDJSON format as the watcher reads it: lines
//	                   forward and backward, record classification, counting,
//	                   the line-level scan, copying kept lines, the block
//	                   index and the in-place head cut, the file estimator
//	backends/fsx       crash-safe file machinery: directory handles, temporary
//	                   files, durable renames and removals, journals, locks,
//	                   write leases, range collapse, the hard-link guard, and
//	                   the crash points tests inject
//
// The kinds import backends, ndjson and fsx; ndjson imports fsx; neither
// imports a kind, and no kind imports another. The tests every journaled
// file backend must pass are written once in backends/internal/backendtest.
package backends
