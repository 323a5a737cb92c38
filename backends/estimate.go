package backends

import (
	"context"
	"time"
)

// Estimator is the optional, cheap side of a backend: what retention would
// remove from the target now, without compacting and without parsing the
// whole of it. NewEstimator returns one for the json, rotating and redis
// backends.
//
// An Estimator remembers what it measured between calls, per file (device
// and inode), and on each call reads only the bytes appended since and a few
// blocks: the json estimator shares the backend's block index
// (ndjson.Index: it checks the first and last 256 KiB blocks and reads the
// blocks the cuts fall in); the rotating estimator (ndjson.FileEstimator)
// compares the first 4 KiB of each file and reads at most 64 KiB per cut. A
// file not seen before, one that shrank or whose read part changed (a copy
// compaction's new file, a rotating segment cut in place) is read whole
// once. The Redis estimator sends XINFO STREAM and MEMORY USAGE per stream,
// pipelined: one round trip.
//
// Estimate may be called from one goroutine at a time.
type Estimator interface {
	Estimate(ctx context.Context, now time.Time, r Retention) (Estimate, error)
}

// Estimate is what retention would remove from a target now.
type Estimate struct {
	// At is the instant the estimate was made for.
	At time.Time `json:"at"`
	// Records and Bytes are what the target holds (records: lines that are
	// records; bytes: stored bytes, Redis: MEMORY USAGE).
	Records int64 `json:"records"`
	Bytes   int64 `json:"bytes"`
	// ReclaimableRecords and ReclaimableBytes are what a compaction with the
	// retention would remove now: records past the age, count and size
	// limits, records without a timestamp under an age limit, and lines that
	// are not records.
	ReclaimableRecords int64 `json:"reclaimable_records"`
	ReclaimableBytes   int64 `json:"reclaimable_bytes"`
	// Oldest is the write time of the oldest record on storage (its
	// timestamp; for Redis its entry id); zero when there is no record.
	Oldest time.Time `json:"oldest,omitzero"`
	// NextExpiry is when the oldest record that retention keeps now passes
	// max_age_seconds; zero without an age limit or without such a record.
	NextExpiry time.Time `json:"next_expiry,omitzero"`
}

// OldestAge is the age of the oldest record at now; 0 when there is none.
func (e Estimate) OldestAge(now time.Time) time.Duration {
	if e.Oldest.IsZero() {
		return 0
	}
	return max(now.Sub(e.Oldest), 0)
}

// ReclaimableRatio is ReclaimableBytes over Bytes (records when bytes are
// unknown); 0 for an empty target.
func (e Estimate) ReclaimableRatio() float64 {
	if e.Bytes > 0 {
		return min(float64(e.ReclaimableBytes)/float64(e.Bytes), 1)
	}
	if e.Records > 0 {
		return min(float64(e.ReclaimableRecords)/float64(e.Records), 1)
	}
	return 0
}

// NewEstimator returns an estimator for b, or nil when b has none (memory,
// or a backend kind that does not know how). A backend kind offers one by
// implementing EstimatorSource.
func NewEstimator(b Backend) Estimator {
	if s, ok := b.(EstimatorSource); ok {
		return s.NewEstimator()
	}
	if e, ok := b.(Estimator); ok {
		return e
	}
	return nil
}

// EstimatorSource is a backend that can estimate what retention would
// remove from it (the json, rotating and redis kinds).
type EstimatorSource interface {
	// NewEstimator returns a new Estimator of the target, with nothing
	// measured yet.
	NewEstimator() Estimator
}
