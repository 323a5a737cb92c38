package backends

import (
	"fmt"
	"time"
)

// Retention is Papyra's RetentionPolicy. A nil limit is no limit.
//
// Records are in write order, oldest first, and the limits apply in this
// order (docs/formats.md):
//  1. MaxAgeSeconds drops records with timestamp < now - MaxAgeSeconds, and
//     records without a numeric timestamp;
//  2. MaxRecords keeps the newest N of what is left;
//  3. MaxTotalBytes keeps the newest records whose stored lines (newline
//     included) add up to at most this many bytes, stopping at the first that
//     does not fit.
//
// Lines that are not JSON objects are never records and are always dropped.
type Retention struct {
	MaxRecords    *int64   `toml:"max_records" json:"max_records,omitempty"`
	MaxAgeSeconds *float64 `toml:"max_age_seconds" json:"max_age_seconds,omitempty"`
	MaxTotalBytes *int64   `toml:"max_total_bytes" json:"max_total_bytes,omitempty"`
}

// IsZero reports whether no limit is set.
func (r Retention) IsZero() bool {
	return r.MaxRecords == nil && r.MaxAgeSeconds == nil && r.MaxTotalBytes == nil
}

// Validate reports a limit that makes no sense.
func (r Retention) Validate() error {
	if r.MaxRecords != nil && *r.MaxRecords < 0 {
		return fmt.Errorf("max_records must not be negative, got %d", *r.MaxRecords)
	}
	if r.MaxAgeSeconds != nil && !(*r.MaxAgeSeconds >= 0) {
		return fmt.Errorf("max_age_seconds must not be negative, got %v", *r.MaxAgeSeconds)
	}
	if r.MaxTotalBytes != nil && *r.MaxTotalBytes < 0 {
		return fmt.Errorf("max_total_bytes must not be negative, got %d", *r.MaxTotalBytes)
	}
	return nil
}

// AddCounts adds the counts of o to d.
func (d *Dropped) AddCounts(o Dropped) {
	d.Age += o.Age
	d.Count += o.Count
	d.Bytes += o.Bytes
	d.NoTimestamp += o.NoTimestamp
	d.Invalid += o.Invalid
	d.Partial += o.Partial
	d.Unexamined += o.Unexamined
}

// DropReason says why a line was not retained.
type DropReason int

// Drop reasons.
const (
	Kept DropReason = iota
	DropInvalid
	DropNoTimestamp
	DropAge
	DropCount
	DropBytes
)

// Add counts one line dropped for reason r.
func (d *Dropped) Add(r DropReason) {
	switch r {
	case DropInvalid:
		d.Invalid++
	case DropNoTimestamp:
		d.NoTimestamp++
	case DropAge:
		d.Age++
	case DropCount:
		d.Count++
	case DropBytes:
		d.Bytes++
	}
}

// Cut evaluates a Retention over records offered newest first. It is the one
// implementation of the retention rules that every file backend uses: walk
// the stored lines from the newest end, Offer each, and stop at Done.
//
// A Cut holds a few counters: memory is constant whatever the size of the
// data.
type Cut struct {
	r       Retention
	cutoff  float64
	kept    int64
	bytes   int64
	done    bool
	doneWhy DropReason
}

// NewCut starts evaluating r as of now.
func (r Retention) NewCut(now time.Time) *Cut {
	c := &Cut{r: r}
	if r.MaxAgeSeconds != nil {
		c.cutoff = UnixSeconds(now) - *r.MaxAgeSeconds
	}
	return c
}

// UnixSeconds is t as fractional Unix seconds, the unit of Papyra's
// timestamps.
func UnixSeconds(t time.Time) float64 {
	return float64(t.Unix()) + float64(t.Nanosecond())/1e9
}

// Offer decides the fate of one stored line, given newest first. size is the
// stored length of the line, newline included. Once Done reports true every
// older line is dropped too, for the reason DoneReason, without needing to be
// read.
func (c *Cut) Offer(info LineInfo, size int64) DropReason {
	if !info.Record {
		return DropInvalid
	}
	if c.done {
		return c.doneWhy
	}
	if c.r.MaxAgeSeconds != nil {
		if !info.HasTimestamp {
			return DropNoTimestamp
		}
		if info.Timestamp < c.cutoff {
			return DropAge
		}
	}
	if c.r.MaxRecords != nil && c.kept >= *c.r.MaxRecords {
		c.done, c.doneWhy = true, DropCount
		return DropCount
	}
	if c.r.MaxTotalBytes != nil && c.bytes+size > *c.r.MaxTotalBytes {
		c.done, c.doneWhy = true, DropBytes
		return DropBytes
	}
	c.kept++
	c.bytes += size
	return Kept
}

// KeepRun keeps a run of records at once, as Offer would keep each of
// them, when none of them would be dropped by the count or size limits; it
// reports whether it kept them. The caller has checked that every line of
// the run is a record the age limit keeps.
func (c *Cut) KeepRun(records, bytes int64) bool {
	if c.done {
		return false
	}
	if c.r.MaxRecords != nil && c.kept+records > *c.r.MaxRecords {
		return false
	}
	if c.r.MaxTotalBytes != nil && c.bytes+bytes > *c.r.MaxTotalBytes {
		return false
	}
	c.kept += records
	c.bytes += bytes
	return true
}

// Done reports whether no older line can be retained.
func (c *Cut) Done() bool { return c.done }

// DoneReason is the reason every line older than the cut is dropped for.
func (c *Cut) DoneReason() DropReason { return c.doneWhy }

// Kept returns how many records were retained so far.
func (c *Cut) Kept() int64 { return c.kept }

// KeptBytes returns the stored bytes of the records retained so far.
func (c *Cut) KeptBytes() int64 { return c.bytes }

// LineInfo is what the classifier learned about one stored line.
type LineInfo struct {
	// Record is true when the line is a JSON object: only such lines are
	// records. Blank lines, lines that are not JSON and JSON that is not an
	// object are not.
	Record bool
	// HasTimestamp is true when the object has a numeric top-level
	// "timestamp"; Timestamp is its value.
	HasTimestamp bool
	Timestamp    float64
}

// Retention returns the retention the cut evaluates.
func (c *Cut) Retention() Retention { return c.r }

// Cutoff returns the oldest timestamp (Unix seconds) an age limit keeps; it
// is meaningful only when the retention has an age limit.
func (c *Cut) Cutoff() float64 { return c.cutoff }
