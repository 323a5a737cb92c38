// Package executor runs the compactions the policy engine decided on:
// single-flight per target (in this process, and across processes through a
// lock file per target in the state directory), with a timeout, an IO
// throttle, and a report published to every subscriber (logs, metrics, NATS
// events).
package executor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
)

// ErrUnknownTarget is reported for a job naming a target the executor does
// not have.
var ErrUnknownTarget = errors.New("unknown target")

// Target is one configured target as the executor runs it.
type Target struct {
	// Name is the target's config name.
	Name string
	// Backend is the storage.
	Backend backends.Backend
	// Retention is the policy to enforce.
	Retention backends.Retention
	// PartialLineGrace is passed to the backend (see CompactOptions).
	PartialLineGrace time.Duration
	// IOBytesPerSecond throttles file rewrites; 0 is unthrottled.
	IOBytesPerSecond int64
}

// Options configure an Executor.
type Options struct {
	// StateDir holds the per-target lock files. Created 0700 if missing.
	StateDir string
	// Node is this node's name, recorded in reports.
	Node string
	// Timeout bounds one compaction; 0 is no limit.
	Timeout time.Duration
	// LockTimeout is how long a compaction waits for another process
	// holding the same target before it reports the target busy.
	LockTimeout time.Duration
	// Now returns the instant age limits are evaluated against; nil is
	// time.Now. `watcher compact --now` sets it.
	Now func() time.Time
	// Logger receives one line per compaction; nil discards.
	Logger *slog.Logger
	// Progress, if set, is called with a target's bytes done and total
	// while it is compacted (the terminal progress display).
	Progress func(target string, done, total int64)
}

// Executor runs compactions. It is safe for concurrent use.
type Executor struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	targets map[string]*slot
	subs    []func(backends.Report)
}

// slot is a target and the mutex that makes its compactions single-flight.
type slot struct {
	run     sync.Mutex // held while a compaction of the target runs
	target  Target
	limiter *rate.Limiter // nil when unthrottled
	retired bool          // removed by SetTargets; closed once idle
}

// New returns an Executor with no targets.
func New(opts Options) *Executor {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Executor{opts: opts, log: log, targets: map[string]*slot{}}
}

// SetTargets replaces the executor's targets (at start and on reload). A
// target whose backend is replaced or removed is closed once its running
// compaction, if any, has finished.
func (e *Executor) SetTargets(ts []Target) {
	e.mu.Lock()
	old := e.targets
	e.targets = make(map[string]*slot, len(ts))
	var retire []*slot
	for _, t := range ts {
		var lim *rate.Limiter
		if t.IOBytesPerSecond > 0 {
			lim = rate.NewLimiter(rate.Limit(t.IOBytesPerSecond), max(int(t.IOBytesPerSecond), 1<<20))
		}
		if s, ok := old[t.Name]; ok && s.target.Backend == t.Backend {
			// Same storage: keep the slot, so single-flight holds across
			// the reload; the next compaction uses the new settings.
			s.target, s.limiter = t, lim
			e.targets[t.Name] = s
			delete(old, t.Name)
			continue
		}
		e.targets[t.Name] = &slot{target: t, limiter: lim}
	}
	for _, s := range old {
		retire = append(retire, s)
	}
	e.mu.Unlock()
	for _, s := range retire {
		go func() {
			s.run.Lock() // wait for a running compaction
			e.mu.Lock()
			s.retired = true
			e.mu.Unlock()
			s.target.Backend.Close()
			s.run.Unlock()
		}()
	}
}

// Targets returns the names of the targets, sorted.
func (e *Executor) Targets() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	names := make([]string, 0, len(e.targets))
	for n := range e.targets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Backend returns the backend of the named target.
func (e *Executor) Backend(name string) (backends.Backend, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := e.targets[name]
	if !ok {
		return nil, false
	}
	return s.target.Backend, true
}

// Subscribe registers fn to receive every report, in the order compactions
// finish. fn must not block.
func (e *Executor) Subscribe(fn func(backends.Report)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.subs = append(e.subs, fn)
}

// Recover completes or rolls back interrupted compactions of every target
// (the first thing `watcher run` and `watcher compact` do). It takes each
// target's lock, so it never disturbs a compaction another process runs.
func (e *Executor) Recover(ctx context.Context) error {
	var errs []error
	for _, name := range e.Targets() {
		b, ok := e.Backend(name)
		if !ok {
			continue
		}
		err := e.withLock(ctx, name, func() error { return b.Recover(ctx) })
		if err != nil && !errors.Is(err, backends.ErrBusy) {
			errs = append(errs, fmt.Errorf("recover %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Run runs one compaction of job.Target and returns its report. It waits
// while another compaction of the same target runs (in this process or, up
// to LockTimeout, in another). The report is also published to subscribers.
// Failures are in Report.Error, never a panic. When the backend skipped the
// compaction because another node holds the target, the report has Skipped
// and no Error: a skip is not a failure.
func (e *Executor) Run(ctx context.Context, job Job) backends.Report {
	start := time.Now()
	rep := backends.Report{Target: job.Target, Trigger: job.Trigger, Node: e.opts.Node,
		StartedAt: start.UTC(), DryRun: job.DryRun}

	e.mu.Lock()
	s := e.targets[job.Target]
	e.mu.Unlock()
	if s == nil {
		rep.Error = fmt.Sprintf("%v: %q", ErrUnknownTarget, job.Target)
		e.publish(rep, job)
		return rep
	}
	s.run.Lock()
	defer s.run.Unlock()
	e.mu.Lock()
	t, limiter, retired := s.target, s.limiter, s.retired
	e.mu.Unlock()
	rep.Backend = t.Backend.Kind()
	if retired {
		rep.Error = fmt.Sprintf("target %q was removed by a config reload", job.Target)
		e.publish(rep, job)
		return rep
	}
	// The report's start is when the compaction really starts, after any
	// wait for a running one.
	start = time.Now()
	rep.StartedAt = start.UTC()

	if e.opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.opts.Timeout)
		defer cancel()
	}
	var out backends.Report
	err := e.withLock(ctx, t.Name, func() error {
		b := t.Backend
		if err := b.Recover(ctx); err != nil {
			return fmt.Errorf("recover interrupted compaction: %w", err)
		}
		opts := backends.CompactOptions{
			Retention:        t.Retention,
			Now:              e.opts.Now(),
			DryRun:           job.DryRun,
			PartialLineGrace: t.PartialLineGrace,
		}
		if limiter != nil {
			opts.WaitIO = func(ctx context.Context, n int) error { return throttle(ctx, limiter, n) }
		}
		if e.opts.Progress != nil {
			name := job.Target
			opts.Progress = func(done, total int64) { e.opts.Progress(name, done, total) }
		}
		r, err := b.Compact(ctx, opts)
		out = r
		if err != nil {
			return err
		}
		if r.Skipped != "" {
			// Another node holds the target: the compaction did not run.
			// That is not a failure (the report has Skipped and no Error),
			// and nothing follows it, not even a requested scan.
			return nil
		}
		if job.Scan {
			anomalies, err := b.Scan(ctx)
			if err != nil {
				return fmt.Errorf("scan after compaction: %w", err)
			}
			for i := range anomalies {
				anomalies[i].Target = job.Target
			}
			out.Anomalies = anomalies
		}
		return nil
	})

	// Keep what the backend measured, and fill what the executor owns.
	out.Target, out.Backend, out.Trigger, out.Node = rep.Target, rep.Backend, rep.Trigger, rep.Node
	out.StartedAt, out.DryRun = rep.StartedAt, job.DryRun
	out.DurationMS = time.Since(start).Milliseconds()
	if err != nil {
		out.Error = err.Error()
	}
	out.Finish()
	e.publish(out, job)
	return out
}

// throttle waits until n more bytes may be written.
func throttle(ctx context.Context, l *rate.Limiter, n int) error {
	for n > 0 {
		step := min(n, l.Burst())
		if err := l.WaitN(ctx, step); err != nil {
			return fmt.Errorf("io throttle: %w", err)
		}
		n -= step
	}
	return nil
}

// lockHook, when set (tests only), is called by withLock once the state
// directory is open, before anything is created in it.
var lockHook func()

// withLock runs fn holding the target's lock file in the state directory, so
// that the daemon and a manual `watcher compact` never compact one target at
// once. It waits up to LockTimeout, then fails with ErrBusy. The state
// directory is opened once (created 0700 if missing; a symbolic link there is
// followed, as the backends do: it is the operator's setting) and the locks
// directory and the lock file are created and opened relative to it
// (fsx.Dir): a state directory renamed away and replaced meanwhile, or a
// symbolic link at locks/ or at the lock file's name, never makes it create
// or open a file anywhere else.
func (e *Executor) withLock(ctx context.Context, name string, fn func() error) error {
	if e.opts.StateDir == "" {
		return fn()
	}
	state, err := fsx.OpenStateDir(e.opts.StateDir)
	if err != nil {
		return fmt.Errorf("open state directory: %w", err)
	}
	defer state.Close()
	if lockHook != nil {
		lockHook()
	}
	state.Chmod(0o700) // best effort: an older or hand-made state directory may be wider
	if err := state.Mkdir("locks", 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create state directory: %w", err)
	}
	locks, err := state.OpenSubdir("locks")
	if err != nil {
		return fmt.Errorf("open lock directory: %w", err)
	}
	defer locks.Close()
	f, _, err := locks.OpenRegular(name+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open lock file: %w", err)
	}
	defer f.Close()
	path := f.Name()
	deadline := time.Now().Add(e.opts.LockTimeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("lock %s: %w", path, err)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%w: another compactor holds %s (waited %s)", backends.ErrBusy, path, e.opts.LockTimeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for lock %s: %w", path, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return fn()
}

func (e *Executor) publish(r backends.Report, job Job) {
	attrs := []any{
		"target", r.Target, "backend", r.Backend, "trigger", r.Trigger,
		"before_records", r.BeforeRecords, "after_records", r.AfterRecords,
		"removed_records", r.RemovedRecords,
		"before_bytes", nullable(r.BeforeBytes), "after_bytes", nullable(r.AfterBytes),
		"reclaimed_bytes", nullable(r.ReclaimedBytes),
		"started_at", r.StartedAt, "duration_ms", r.DurationMS, "dry_run", r.DryRun,
	}
	if r.Method != "" {
		attrs = append(attrs, "method", r.Method)
	}
	if job.Reason != "" {
		attrs = append(attrs, "reason", job.Reason)
	}
	if r.AppendedDuring > 0 {
		attrs = append(attrs, "appended_during", r.AppendedDuring)
	}
	d := r.Dropped
	if d != (backends.Dropped{}) {
		attrs = append(attrs, slog.Group("dropped", "age", d.Age, "count", d.Count, "bytes", d.Bytes,
			"no_timestamp", d.NoTimestamp, "invalid", d.Invalid, "partial", d.Partial, "unexamined", d.Unexamined))
	}
	if len(r.Anomalies) > 0 {
		attrs = append(attrs, "anomalies", len(r.Anomalies))
	}
	switch {
	case r.Error != "":
		e.log.Error("compaction failed", append(attrs, "error", r.Error)...)
	case r.Skipped != "":
		e.log.Info("compaction skipped", append(attrs, "skipped", r.Skipped)...)
	default:
		e.log.Info("compaction", attrs...)
	}
	e.mu.Lock()
	subs := e.subs
	e.mu.Unlock()
	for _, fn := range subs {
		fn(r)
	}
}

func nullable(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}
