package redis

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/papyra/watcher/backends"
)

// redisEstimator is the Estimator of a redis target: per stream, XINFO
// STREAM (length, first and last entry ids) and MEMORY USAGE, pipelined in
// one round trip for all three streams.
//
// Entry ids are write times in milliseconds, so the first entry's id is the
// age of the oldest record. How many entries an age limit removes is
// interpolated between the first and the last entry ids (entries are
// assumed evenly spread in time between them); bytes are MEMORY USAGE
// shared evenly among entries, as the redis backend sizes max_total_bytes.
//
// With approx_trim, a trim removes whole stream nodes only, so what it can
// remove is counted in whole nodes, of the size approxNodeEntries derives
// from the radix-tree-keys XINFO STREAM reports (nodes end at
// stream-node-max-entries or stream-node-max-bytes, whichever comes first):
// an excess smaller than one node is not reclaimable, however long it stays,
// and NextExpiry is when the next whole node is past max_age_seconds.
type redisEstimator struct {
	b *Streams
}

var _ backends.EstimatorSource = (*Streams)(nil)

// NewEstimator returns the estimator of the target's streams.
func (s *Streams) NewEstimator() backends.Estimator { return &redisEstimator{b: s} }

// idMillis is the millisecond part of a stream entry id.
func idMillis(id string) (int64, bool) {
	ms, _, _ := strings.Cut(id, "-")
	v, err := strconv.ParseInt(ms, 10, 64)
	return v, err == nil
}

// approxNodeEntries is the entries of one full node of a stream of n
// entries in keys nodes (XINFO STREAM's radix-tree-keys), for counting what
// an approximate trim removes: the nodes but the newest are taken as full
// and the newest as holding one entry, which is the most a full node can
// hold. Rounding up, the estimate of what a trim removes errs low, never
// high: the retention trigger then never waits for a removal that no trim
// makes.
func approxNodeEntries(n, keys int64) int64 {
	if keys <= 1 || n <= 1 {
		return max(n, 1)
	}
	return (n - 1 + keys - 2) / (keys - 1)
}

// Estimate implements backends.Estimator.
func (e *redisEstimator) Estimate(ctx context.Context, now time.Time, r backends.Retention) (backends.Estimate, error) {
	est := backends.Estimate{At: now}
	cctx, cancel := e.b.cmdCtx(ctx)
	defer cancel()
	pipe := e.b.client.Pipeline()
	infos := make([]*goredis.XInfoStreamCmd, len(e.b.streams))
	mems := make([]*goredis.IntCmd, len(e.b.streams))
	for i, key := range e.b.streams {
		infos[i] = pipe.XInfoStream(cctx, key)
		mems[i] = pipe.MemoryUsage(cctx, key)
	}
	_, _ = pipe.Exec(cctx)
	var nextExp time.Time
	for i, key := range e.b.streams {
		info, err := infos[i].Result()
		if err != nil {
			if errors.Is(err, goredis.Nil) || strings.Contains(err.Error(), "no such key") {
				continue
			}
			return est, e.b.fail(ctx, "XINFO STREAM", key, err)
		}
		n := info.Length
		if n <= 0 {
			continue
		}
		mem, err := mems[i].Result()
		if err != nil || mem < 0 {
			mem = 0 // MEMORY USAGE refused (ACL): sizes unknown
		}
		per := float64(mem) / float64(n)
		est.Records += n
		est.Bytes += mem
		first, ok1 := idMillis(info.FirstEntry.ID)
		last, ok2 := idMillis(info.LastEntry.ID)
		if !ok1 || !ok2 {
			continue
		}
		if o := time.UnixMilli(first); est.Oldest.IsZero() || o.Before(est.Oldest) {
			est.Oldest = o
		}
		// perNode is the entries of a full node; an exact trim removes
		// single entries.
		perNode := int64(1)
		if e.b.cfg.ApproxTrim {
			perNode = approxNodeEntries(n, info.RadixTreeKeys)
		}
		var drop int64
		left := n
		if r.MaxAgeSeconds != nil {
			cutoff := float64(now.UnixMilli()) - *r.MaxAgeSeconds*1000
			switch {
			case cutoff > float64(last):
				drop = n
			case cutoff > float64(first):
				drop = int64(math.Round(float64(n) * (cutoff - float64(first)) / float64(last-first+1)))
			}
			left = n - drop
			// The oldest entry kept, interpolated, expires at:
			keptMs := float64(first)
			if drop > 0 {
				keptMs = max(cutoff, float64(first))
			}
			if perNode > 1 && left > 0 {
				// Approximate: when the last entry of the first whole
				// node not removable now is past the limit.
				i := min(drop-drop%perNode+perNode, n) - 1
				keptMs = float64(first)
				if n > 1 {
					keptMs += float64(i) * float64(last-first) / float64(n-1)
				}
			}
			if left > 0 {
				t := time.UnixMilli(int64(keptMs + *r.MaxAgeSeconds*1000))
				if nextExp.IsZero() || t.Before(nextExp) {
					nextExp = t
				}
			}
		}
		keep := left
		if r.MaxRecords != nil {
			keep = min(keep, *r.MaxRecords)
		}
		if r.MaxTotalBytes != nil && per > 0 {
			keep = min(keep, int64(float64(*r.MaxTotalBytes)/per))
		}
		drop += left - max(keep, 0)
		drop -= drop % perNode
		est.ReclaimableRecords += drop
		est.ReclaimableBytes += int64(float64(drop) * per)
	}
	est.NextExpiry = nextExp
	return est, nil
}
