package jsonfile

import (
	"context"
	"fmt"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/ndjson"
)

var _ backends.EstimatorSource = (*File)(nil)

// NewEstimator returns the estimator of the file: what retention would
// remove from it now. It shares the backend's block index (ndjson.Index)
// with the in-place compaction: each refresh reads only what was appended
// since the last refresh or compaction, and a compaction in place then
// finds those lines already read; an in-place cut moves the index instead
// of making the next refresh read the whole file again.
func (f *File) NewEstimator() backends.Estimator { return indexEstimator{f} }

type indexEstimator struct{ j *File }

// Estimate implements backends.Estimator. While a compaction holds the
// index it returns an error wrapping backends.ErrBusy.
func (e indexEstimator) Estimate(ctx context.Context, now time.Time, r backends.Retention) (backends.Estimate, error) {
	j := e.j
	est := backends.Estimate{At: now}
	path, err := j.resolve()
	if err != nil {
		return est, err
	}
	if !j.mu.TryLock() {
		return est, fmt.Errorf("%s: being compacted: %w", path, backends.ErrBusy)
	}
	defer j.mu.Unlock()
	f, fi, err := ndjson.OpenForEstimate(path, j.cfg.FollowSymlinks)
	if err != nil || f == nil {
		return est, err
	}
	defer f.Close()
	size := fi.Size()
	end, err := ndjson.LastLineEnd(f, size)
	if err != nil {
		return est, err
	}
	if err := j.index.Update(ctx, f, end); err != nil {
		return est, err
	}
	ie, err := j.index.Estimate(ctx, f, r, now)
	if err != nil {
		return est, err
	}
	est.Records, est.Bytes = ie.Records, size
	est.ReclaimableRecords = ie.Records - ie.Kept
	est.ReclaimableBytes = max(end-ie.KeptBytes-ie.FillerEnd, 0)
	if ie.HasOldest {
		est.Oldest = ndjson.TimeOfSeconds(ie.Oldest)
	}
	if r.MaxAgeSeconds != nil && ie.HasOldestKept {
		est.NextExpiry = ndjson.TimeOfSeconds(ie.OldestKept + *r.MaxAgeSeconds)
	}
	return est, nil
}
