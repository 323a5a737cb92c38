package backends

import (
	"context"
	"errors"
	"time"
)

// Kind names of the backends, as written in the config's `backend` key and in
// reports.
const (
	KindJSON     = "json"
	KindRotating = "rotating"
	KindRedis    = "redis"
	KindMemory   = "memory"
)

// Sentinel errors. Backends wrap them with %w so callers can test with
// errors.Is.
var (
	// ErrConcurrentRotation is returned when the writer rotated a file set
	// while it was being compacted. Nothing was changed; retry.
	ErrConcurrentRotation = errors.New("concurrent rotation detected")
	// ErrTargetReplaced is returned when the target file was replaced or
	// deleted by someone else during a compaction. Nothing was changed.
	ErrTargetReplaced = errors.New("target replaced during compaction")
	// ErrSymlink is returned when a target path is a symbolic link and the
	// target does not set follow_symlinks.
	ErrSymlink = errors.New("target path is a symbolic link")
	// ErrBusy is returned when another compactor holds the target.
	ErrBusy = errors.New("target is busy")
	// ErrUnavailable is returned when the storage cannot be reached (for
	// example Redis is down).
	ErrUnavailable = errors.New("storage unavailable")
	// ErrNotRegular is returned when a target file is not a regular file
	// (a FIFO, a socket, a device, a directory). Nothing was changed.
	ErrNotRegular = errors.New("not a regular file")
)

// Backend is one compactable store: a file, a rotating file set, a set of
// Redis streams, or Papyra's in-process memory.
//
// Implementations must be safe for use by one compaction at a time; the
// executor guarantees single-flight per target. Stat may be called
// concurrently with Compact.
type Backend interface {
	// Kind returns the backend kind (KindJSON, ...).
	Kind() string
	// Compact applies the retention in opts and rewrites storage so that only
	// the retained records remain. With opts.DryRun it computes the same
	// report and changes nothing.
	Compact(ctx context.Context, opts CompactOptions) (Report, error)
	// Stat returns cheap size information. It never blocks on a compaction.
	Stat(ctx context.Context) (Stat, error)
	// Scan reads storage without changing it and returns every anomaly it
	// finds (see docs/formats.md): the migration preflight.
	Scan(ctx context.Context) ([]Anomaly, error)
	// Recover completes or rolls back a compaction that was interrupted
	// (crash, SIGKILL) and removes its leftovers. It is cheap when there is
	// nothing to recover and is called before every compaction and at start.
	Recover(ctx context.Context) error
	// Close releases connections and files.
	Close() error
}

// CompactOptions is what one compaction is asked to do.
type CompactOptions struct {
	// Retention is the policy to enforce. The zero value keeps every record
	// (a compaction then only drops lines that are not records).
	Retention Retention
	// Now is the instant age limits are evaluated against.
	Now time.Time
	// DryRun computes the report without changing storage.
	DryRun bool
	// PartialLineGrace is how long a file must have been quiet before an
	// unterminated final line counts as a crash leftover rather than a write
	// in flight.
	PartialLineGrace time.Duration
	// WaitIO, if set, is called before n bytes are written; it blocks to
	// throttle IO and returns an error when ctx is done.
	WaitIO func(ctx context.Context, n int) error
	// Progress, if set, is called from time to time with the bytes processed
	// so far and the total expected.
	Progress func(done, total int64)
}

// Stat is the cheap size of a target.
type Stat struct {
	// Bytes is the stored size; -1 when unknown.
	Bytes int64
	// Files are the absolute paths that make up a file target (for the
	// growth and disk triggers); empty for other backends.
	Files []string
	// ModTime is the newest modification time among Files.
	ModTime time.Time
}

// Anomaly is one thing a scan found that a migration should not start on.
type Anomaly struct {
	Target string `json:"target"`
	// Type is one of the Anomaly* constants.
	Type   string `json:"type"`
	Path   string `json:"path"`
	Detail string `json:"detail"`
}

// Anomaly types.
const (
	AnomalyInvalidLine      = "invalid_line"      // blank, not JSON, or not an object
	AnomalyPartialLine      = "partial_line"      // unterminated final line
	AnomalyMissingTimestamp = "missing_timestamp" // record without a numeric timestamp
	AnomalyUnknownKind      = "unknown_kind"      // kind not event/audit/dead_letter
	AnomalyOrphanFile       = "orphan_file"       // rotating segment beyond max_files
	AnomalyLeftover         = "leftover"          // temp file or interrupted swap
	AnomalyMissingData      = "missing_data"      // redis entry without a data field
	AnomalyUnreadable       = "unreadable"        // storage could not be read
)

// Report is the outcome of one compaction: Papyra's CompactionReport plus
// what an operator needs. It is the JSON of `watcher compact --json`, of NATS
// replies and events, and of /status.
type Report struct {
	Target  string `json:"target"`
	Backend string `json:"backend"`
	// Trigger is the kind of signal that caused the compaction ("manual"
	// for `watcher compact`).
	Trigger       string `json:"trigger"`
	BeforeRecords int64  `json:"before_records"`
	AfterRecords  int64  `json:"after_records"`
	// BeforeBytes and AfterBytes are nil where not measurable.
	BeforeBytes    *int64    `json:"before_bytes"`
	AfterBytes     *int64    `json:"after_bytes"`
	RemovedRecords int64     `json:"removed_records"`
	ReclaimedBytes *int64    `json:"reclaimed_bytes"`
	StartedAt      time.Time `json:"started_at"`
	DurationMS     int64     `json:"duration_ms"`
	DryRun         bool      `json:"dry_run"`
	Error          string    `json:"error"`

	// Extensions.

	// Dropped says why records and lines were removed.
	Dropped Dropped `json:"dropped"`
	// AppendedDuring counts records the writer appended while the
	// compaction ran; they are kept and included in AfterRecords.
	AppendedDuring int64 `json:"appended_during,omitempty"`
	// Skipped is set when the compaction did not run, with the reason (for
	// example "held by node-2").
	Skipped string `json:"skipped,omitempty"`
	// Notes are facts a reader should know, such as "after_bytes is an
	// estimate".
	Notes []string `json:"notes,omitempty"`
	// Anomalies are filled when a scan followed the compaction
	// (pre-migration).
	Anomalies []Anomaly `json:"anomalies,omitempty"`
	// Node is the node that ran the compaction.
	Node string `json:"node,omitempty"`
	// Method is how storage was changed: MethodInPlace, MethodCopy,
	// MethodTrim or MethodNone; for a dry run, how it would be.
	Method string `json:"method,omitempty"`
}

// Methods. A file target is configured with MethodAuto or MethodCopy; a
// report says which method ran: MethodInPlace (dropped bytes collapsed out
// of the file itself), MethodCopy (the survivors rewritten into a new
// file), MethodTrim (Redis XTRIM) or MethodNone (nothing had to change).
const (
	MethodAuto    = "auto"
	MethodCopy    = "copy"
	MethodInPlace = "in_place"
	MethodTrim    = "trim"
	MethodNone    = "none"
)

// Dropped counts what a compaction removed, by reason. Lines that retention
// removed without reading them (older than a count or size cut) are counted
// in Unexamined: they are lines, not necessarily valid records.
type Dropped struct {
	Age         int64 `json:"age"`
	Count       int64 `json:"count"`
	Bytes       int64 `json:"bytes"`
	NoTimestamp int64 `json:"no_timestamp"`
	Invalid     int64 `json:"invalid"`
	Partial     int64 `json:"partial"`
	Unexamined  int64 `json:"unexamined"`
}

// Finish fills the derived fields RemovedRecords and ReclaimedBytes.
func (r *Report) Finish() {
	r.RemovedRecords = r.BeforeRecords - r.AfterRecords
	if r.BeforeBytes != nil && r.AfterBytes != nil {
		v := *r.BeforeBytes - *r.AfterBytes
		r.ReclaimedBytes = &v
	} else {
		r.ReclaimedBytes = nil
	}
}

// Int64 returns a pointer to v, for the nullable report fields.
func Int64(v int64) *int64 { return &v }
