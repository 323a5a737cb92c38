package triggers

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/fsnotify/fsnotify"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/policy"
)

// Defaults of GrowthOptions.
const (
	growthDefaultPoll         = 2 * time.Second
	growthDefaultCoalesce     = 100 * time.Millisecond
	growthDefaultRetry        = 30 * time.Second
	growthDefaultRetryMax     = 30 * time.Minute
	growthOwnFileMarker       = ".watcher-" // in every name the watcher itself creates
	growthSysctlWatches       = "fs.inotify.max_user_watches"
	growthSysctlInstances     = "fs.inotify.max_user_instances"
	growthSuggestedMaxWatches = 524288
)

// ErrWatchLimit is wrapped by the errors the growth trigger logs when the
// kernel refuses an inotify watch or instance for lack of room (the
// fs.inotify.max_user_watches or fs.inotify.max_user_instances sysctl).
var ErrWatchLimit = errors.New("inotify limit reached")

// GrowthOptions tunes a Growth trigger. The zero value is the production
// setting.
type GrowthOptions struct {
	// PollInterval is how often the sizes of targets that cannot be watched
	// are polled, and missing directories looked for again (default 2s).
	PollInterval time.Duration
	// Coalesce is the least time between two stats of one target caused by
	// file events, so an event storm costs one stat per period (default
	// 100ms).
	Coalesce time.Duration
	// RetryBackoff is how long after a failed or skipped compaction the same
	// growth may fire again; it doubles with each consecutive failure up to
	// RetryBackoffMax (defaults 30s and 30m).
	RetryBackoff    time.Duration
	RetryBackoffMax time.Duration
	// ForcePolling never uses inotify and polls every target (for
	// filesystems where inotify does not see other writers, such as NFS).
	ForcePolling bool
}

// GrowthStatus is what the growth trigger knows of one target.
type GrowthStatus struct {
	Target string `json:"target"`
	// Bytes is the last measured size (summed over a rotating set).
	Bytes int64 `json:"bytes"`
	// Baseline is the size growth is measured from: after the last
	// compaction, or at start.
	Baseline int64 `json:"baseline"`
	// Fired is true from a growth signal until the compaction it asked for
	// reports back.
	Fired bool `json:"fired"`
	// Polling is true when the target's sizes are polled instead of watched.
	Polling bool `json:"polling"`
}

// Growth is the file-growth trigger. It watches the directories of file
// targets with inotify (fsnotify) — never the files, whose inodes
// compaction and rotation replace — and emits a routine policy.KindGrowth
// signal when a target has grown since its last compaction by at least
// MinBytes and at least MinRatio × its post-compaction size (Redis's
// auto-aof-rewrite rule). A rotating target's size is the sum over its
// files.
//
// Baseline: the size when the target is first seen, then AfterBytes of each
// successful real compaction that Observe is told of (or the size measured
// right after it when AfterBytes is unknown). Dry runs change nothing. The
// watcher's own compactions shrink the file, so the events they cause never
// cross the threshold, and a size that drops below the baseline (another
// compactor, a rotation dropping its oldest segment, a truncation) lowers
// the baseline to it.
//
// After firing, the same growth does not fire again until a compaction
// reports back. When the report says it failed or was skipped, the growth
// may fire again, but only after a back-off (RetryBackoff, doubling per
// consecutive failure up to RetryBackoffMax): a transient failure (target
// busy, concurrent rotation) is retried soon by the growth that is still
// there, while a persistent one does not turn every append into a new
// signal. When the back-off ends the target is measured again, so a quiet
// file is retried too.
//
// Robustness: a missing or deleted directory is watched for through its
// nearest existing ancestor (and looked for every PollInterval), files that
// appear later are picked up by the directory watch, and when the kernel
// refuses a watch (fs.inotify.max_user_watches exhausted: ENOSPC) or an
// inotify instance (fs.inotify.max_user_instances: EMFILE) the error is
// logged naming the sysctl and the targets concerned are polled every
// PollInterval instead. A config reload (SetTargets) retries the watches.
// Events for the watcher's own temporary files (names containing
// ".watcher-") and for unrelated files are ignored; a target is stat'ed only
// when one of its own files changed, at most once per Coalesce.
type Growth struct {
	logger *slog.Logger
	opts   GrowthOptions

	// newWatcher and addWatch create the inotify instance and add a
	// watch; tests replace them to simulate the kernel's limits.
	newWatcher func() (*fsnotify.Watcher, error)
	addWatch   func(w *fsnotify.Watcher, dir string) error
	// Test hooks, called from Run's goroutine: after a target was
	// evaluated (and any signal emitted), after the watches were
	// reconciled.
	hookEval      func(name string, size int64, fired bool)
	hookReconcile func()

	mu      sync.Mutex
	targets map[string]*growthTarget
	order   []string
	changed bool // targets changed since the last reconcile
	// retryFailed: a reload asks to retry the watches the kernel refused.
	retryFailed bool
	wake        chan struct{}

	ready     chan struct{} // closed once Run has watched and measured every target
	readyOnce sync.Once
}

// Ready returns a channel closed once Run has set up its watches and taken
// every target's baseline: growth from then on is seen.
func (g *Growth) Ready() <-chan struct{} { return g.ready }

// growthTarget is the state of one target. Guarded by Growth.mu.
type growthTarget struct {
	t            Target
	hasBaseline  bool // false: measure and take it
	baseline     int64
	size         int64
	fired        bool
	failures     int
	retryAt      time.Time // no firing before; zero when none
	retryPending bool      // measure again at retryAt
	polling      bool
	lastStat     time.Time
	dirty        bool // a file changed since lastStat
}

// Growth is a Source.
var _ Source = (*Growth)(nil)

// NewGrowth returns a Growth trigger for targets (those without Files are
// ignored). Options are optional; at most the first is used.
func NewGrowth(targets []Target, logger *slog.Logger, opts ...GrowthOptions) *Growth {
	if logger == nil {
		logger = slog.Default()
	}
	var o GrowthOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.PollInterval <= 0 {
		o.PollInterval = growthDefaultPoll
	}
	if o.Coalesce <= 0 {
		o.Coalesce = growthDefaultCoalesce
	}
	if o.RetryBackoff <= 0 {
		o.RetryBackoff = growthDefaultRetry
	}
	if o.RetryBackoffMax < o.RetryBackoff {
		o.RetryBackoffMax = max(growthDefaultRetryMax, o.RetryBackoff)
	}
	g := &Growth{
		logger:     logger.With("trigger", policy.KindGrowth),
		opts:       o,
		newWatcher: fsnotify.NewWatcher,
		addWatch:   func(w *fsnotify.Watcher, dir string) error { return w.Add(dir) },
		targets:    make(map[string]*growthTarget),
		wake:       make(chan struct{}, 1),
		ready:      make(chan struct{}),
	}
	g.SetTargets(targets)
	return g
}

// SetTargets replaces the target list: watches follow at once. A target
// whose files changed gets a new baseline; one whose thresholds changed
// keeps its baseline and is evaluated again. A reload also retries watches
// that failed before (the moment to do it is after raising the sysctl).
func (g *Growth) SetTargets(targets []Target) {
	g.mu.Lock()
	defer g.mu.Unlock()
	old := g.targets
	g.targets = make(map[string]*growthTarget, len(targets))
	g.order = g.order[:0]
	for _, t := range targets {
		if len(t.Files) == 0 {
			continue
		}
		if _, dup := g.targets[t.Name]; dup {
			continue
		}
		gt := old[t.Name]
		switch {
		case gt == nil || !slices.Equal(gt.t.Files, t.Files):
			gt = &growthTarget{}
		case gt.t.Growth != t.Growth:
			gt.dirty = true
		}
		gt.t = t
		g.targets[t.Name] = gt
		g.order = append(g.order, t.Name)
	}
	g.changed = true
	g.retryFailed = true
	g.poke()
}

// poke wakes Run; it never blocks.
func (g *Growth) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// Observe moves the baseline after a successful real compaction, and
// re-arms (after a back-off) a target whose compaction failed or was
// skipped. Dry runs are ignored.
func (g *Growth) Observe(r backends.Report) {
	if r.DryRun {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	gt, ok := g.targets[r.Target]
	if !ok {
		return
	}
	if r.Error != "" || r.Skipped != "" {
		if !gt.fired {
			return // not a compaction we asked for; nothing to re-arm
		}
		gt.fired = false
		gt.failures++
		backoff := g.opts.RetryBackoff
		for i := 1; i < gt.failures && backoff < g.opts.RetryBackoffMax; i++ {
			backoff *= 2
		}
		backoff = min(backoff, g.opts.RetryBackoffMax)
		gt.retryAt = time.Now().Add(backoff)
		gt.retryPending = true
		g.poke()
		return
	}
	gt.fired = false
	gt.failures = 0
	gt.retryAt = time.Time{}
	gt.retryPending = false
	if r.AfterBytes != nil {
		gt.baseline = *r.AfterBytes
		gt.hasBaseline = true
	} else {
		gt.hasBaseline = false // measure it now
		g.poke()
	}
}

// Status returns what the trigger knows of each target, in config order.
func (g *Growth) Status() []GrowthStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]GrowthStatus, 0, len(g.order))
	for _, name := range g.order {
		gt := g.targets[name]
		out = append(out, GrowthStatus{Target: name, Bytes: gt.size, Baseline: gt.baseline, Fired: gt.fired, Polling: gt.polling})
	}
	return out
}

// growthWatchError explains an error from adding a watch (op "watch") or
// creating the inotify instance (op "inotify"), naming the sysctl to raise
// when a kernel limit is the cause.
func growthWatchError(op, path string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return fmt.Errorf("watch %s: %w: the sysctl %s is exhausted (raise it, e.g. sysctl -w %s=%d); polling instead: %w",
			path, ErrWatchLimit, growthSysctlWatches, growthSysctlWatches, growthSuggestedMaxWatches, err)
	case op == "inotify" && errors.Is(err, syscall.EMFILE):
		return fmt.Errorf("create inotify instance: %w: the sysctl %s is exhausted (raise it, e.g. sysctl -w %s=1024) or the process is out of file descriptors; polling instead: %w",
			ErrWatchLimit, growthSysctlInstances, growthSysctlInstances, err)
	case op == "inotify":
		return fmt.Errorf("create inotify instance: %w; polling instead", err)
	default:
		return fmt.Errorf("watch %s: %w; polling instead", path, err)
	}
}

// growthOwnFile reports whether name is a file the watcher itself creates.
func growthOwnFile(name string) bool {
	return strings.Contains(filepath.Base(name), growthOwnFileMarker)
}

// growthSize is the summed size of files; missing ones count 0.
func growthSize(files []string) int64 {
	var n int64
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// growthExistingAncestor returns the nearest existing directory above dir.
func growthExistingAncestor(dir string) (string, bool) {
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			return p, true
		}
		if filepath.Dir(p) == p {
			return "", false
		}
	}
}

// growthIsDir reports whether dir exists and is a directory.
func growthIsDir(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && fi.IsDir()
}

// growthLoop is Run's own state.
type growthLoop struct {
	g       *Growth
	w       *fsnotify.Watcher // nil: polling everything
	noWatch error             // why w is nil
	watched map[string]bool   // dirs with a watch
	failed  map[string]error  // dirs whose watch the kernel refused
	missing map[string]bool   // target dirs that do not exist
	files   map[string][]string
	dirs    map[string][]string // target dir → target names
	// evaluated are the evaluations of the last pass, for hookEval.
	evaluated []growthEvaluated
}

// Run watches and emits until ctx is done, then returns nil.
func (g *Growth) Run(ctx context.Context, emit Emit) error {
	l := &growthLoop{
		g:       g,
		watched: make(map[string]bool),
		failed:  make(map[string]error),
		missing: make(map[string]bool),
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if g.opts.ForcePolling {
		l.noWatch = errors.New("polling forced by configuration")
	} else if w, err := g.newWatcher(); err != nil {
		l.noWatch = growthWatchError("inotify", "", err)
		g.logger.Error("cannot watch files; every target is polled", "err", l.noWatch, "interval", g.opts.PollInterval)
	} else {
		l.w = w
		defer w.Close()
		events, errs = w.Events, w.Errors
	}

	g.mu.Lock()
	g.changed = true
	g.mu.Unlock()

	poll := time.NewTimer(time.Hour)
	flush := time.NewTimer(time.Hour)
	poll.Stop()
	defer poll.Stop()
	defer flush.Stop()
	var pollAt time.Time // when the poll timer fires; zero when stopped
	for {
		l.reconcile()
		sigs, next := l.evaluate(time.Now())
		for _, s := range sigs {
			emit(s)
		}
		l.afterEmit()
		g.readyOnce.Do(func() { close(g.ready) })
		if next.IsZero() {
			flush.Stop()
		} else {
			flush.Reset(time.Until(next))
		}
		switch need := l.needPoll(); {
		case need && pollAt.IsZero():
			pollAt = time.Now().Add(g.opts.PollInterval)
			poll.Reset(g.opts.PollInterval)
		case !need && !pollAt.IsZero():
			pollAt = time.Time{}
			poll.Stop()
		}

	wait:
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				break wait
			}
			l.event(ev)
			// Drain what is already queued before evaluating.
			for range 256 {
				select {
				case ev, ok := <-events:
					if !ok {
						events = nil
						break wait
					}
					l.event(ev)
				default:
					break wait
				}
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				break wait
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				g.logger.Warn("inotify queue overflowed; measuring every target", "err", err)
				l.markAll()
			} else {
				g.logger.Error("inotify error", "err", err)
			}
		case <-g.wake:
		case <-flush.C:
		case <-poll.C:
			pollAt = time.Time{}
			g.mu.Lock()
			if len(l.missing) > 0 {
				g.changed = true
			}
			for _, gt := range g.targets {
				if gt.polling {
					gt.dirty = true
				}
			}
			g.mu.Unlock()
		}
	}
}

// needPoll reports whether the poll timer is needed: polled targets or
// missing directories.
func (l *growthLoop) needPoll() bool {
	if len(l.missing) > 0 {
		return true
	}
	l.g.mu.Lock()
	defer l.g.mu.Unlock()
	for _, gt := range l.g.targets {
		if gt.polling {
			return true
		}
	}
	return false
}

// markAll marks every target to be measured.
func (l *growthLoop) markAll() {
	l.g.mu.Lock()
	defer l.g.mu.Unlock()
	for _, gt := range l.g.targets {
		gt.dirty = true
	}
}

// event handles one fsnotify event: cheap map lookups, no IO.
func (l *growthLoop) event(ev fsnotify.Event) {
	name := filepath.Clean(ev.Name)
	if growthOwnFile(name) {
		return
	}
	if ev.Op == fsnotify.Chmod {
		return
	}
	g := l.g
	if names, ok := l.files[name]; ok {
		g.mu.Lock()
		for _, n := range names {
			if gt := g.targets[n]; gt != nil {
				gt.dirty = true
			}
		}
		g.mu.Unlock()
	}
	// A target directory (or one of its missing ancestors) appeared, went
	// or was renamed: redo the watches.
	structural := false
	if ev.Op&(fsnotify.Remove|fsnotify.Rename) != 0 && l.watched[name] {
		// A watched directory (a target's, or the ancestor watched for a
		// missing one) went: inotify dropped its watch with it.
		delete(l.watched, name)
		if l.w != nil {
			_ = l.w.Remove(name)
		}
		structural = true
	}
	if _, ok := l.dirs[name]; ok && ev.Op&(fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0 {
		structural = true
	}
	if ev.Op&(fsnotify.Create|fsnotify.Rename) != 0 {
		for m := range l.missing {
			if strings.HasPrefix(m, name+string(filepath.Separator)) {
				structural = true
				break
			}
		}
	}
	if structural {
		g.mu.Lock()
		g.changed = true
		g.mu.Unlock()
	}
}

// reconcile makes the watches match the targets, when they changed or a
// directory appeared or went; it takes missing baselines after the watches
// are in place, so no growth is lost in between.
func (l *growthLoop) reconcile() {
	g := l.g
	g.mu.Lock()
	if !g.changed {
		g.mu.Unlock()
		return
	}
	g.changed = false
	if g.retryFailed {
		g.retryFailed = false
		clear(l.failed)
	}
	type tinfo struct {
		name  string
		files []string
	}
	var ts []tinfo
	for _, name := range g.order {
		ts = append(ts, tinfo{name, g.targets[name].t.Files})
	}
	g.mu.Unlock()

	l.files = make(map[string][]string)
	l.dirs = make(map[string][]string)
	tdirs := make(map[string][]string) // target → its dirs
	for _, t := range ts {
		for _, f := range t.files {
			f = filepath.Clean(f)
			l.files[f] = append(l.files[f], t.name)
			d := filepath.Dir(f)
			if !slices.Contains(l.dirs[d], t.name) {
				l.dirs[d] = append(l.dirs[d], t.name)
				tdirs[t.name] = append(tdirs[t.name], d)
			}
		}
	}

	// Which directory to watch for each target directory.
	want := make(map[string]bool)
	l.missing = make(map[string]bool)
	watchOf := make(map[string]string)
	for d := range l.dirs {
		if growthIsDir(d) {
			want[d] = true
			watchOf[d] = d
			continue
		}
		l.missing[d] = true
		if a, ok := growthExistingAncestor(d); ok {
			want[a] = true
			watchOf[d] = a
		}
	}

	added := make(map[string]bool)
	if l.w != nil {
		for d := range l.watched {
			if !want[d] {
				_ = l.w.Remove(d)
				delete(l.watched, d)
			}
		}
		for d := range l.failed {
			if !want[d] {
				delete(l.failed, d)
			}
		}
		for d := range want {
			if l.watched[d] || l.failed[d] != nil {
				continue
			}
			if err := g.addWatch(l.w, d); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					// Gone between the stat and the watch: look again.
					g.mu.Lock()
					g.changed = true
					g.mu.Unlock()
					g.poke()
					continue
				}
				werr := growthWatchError("watch", d, err)
				l.failed[d] = werr
				g.logger.Error("cannot watch directory; its targets are polled", "dir", d, "err", werr, "interval", g.opts.PollInterval)
				continue
			}
			l.watched[d] = true
			added[d] = true
		}
	}

	// Per target: polled or watched; measure what may have changed unseen.
	g.mu.Lock()
	for _, t := range ts {
		gt := g.targets[t.name]
		if gt == nil {
			continue
		}
		polling := l.w == nil
		var reason error = l.noWatch
		for _, d := range tdirs[t.name] {
			w := watchOf[d]
			if w == "" {
				continue // no ancestor at all: the poll looks again
			}
			if err := l.failed[w]; err != nil {
				polling, reason = true, err
			}
			if added[w] || l.missing[d] {
				gt.dirty = true
			}
		}
		if polling && !gt.polling && l.w != nil {
			g.logger.Warn("target is polled instead of watched", "target", t.name, "interval", g.opts.PollInterval, "err", reason)
		}
		if polling && !gt.polling {
			gt.dirty = true
		}
		gt.polling = polling
	}
	g.mu.Unlock()
	if g.hookReconcile != nil {
		g.hookReconcile()
	}
}

// growthEval is one target to measure.
type growthEval struct {
	name  string
	files []string
}

// evaluate measures the dirty targets that are out of their coalescing
// window and those without a baseline, and returns the signals and the next
// time something is due (a coalescing window or a retry back-off).
func (l *growthLoop) evaluate(now time.Time) ([]policy.Signal, time.Time) {
	g := l.g
	var todo []growthEval
	var next time.Time
	later := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	g.mu.Lock()
	for _, name := range g.order {
		gt := g.targets[name]
		if gt.retryPending {
			if now.Before(gt.retryAt) {
				later(gt.retryAt)
			} else {
				gt.retryPending = false
				gt.dirty = true
			}
		}
		if !gt.hasBaseline {
			todo = append(todo, growthEval{name, gt.t.Files})
			continue
		}
		if !gt.dirty {
			continue
		}
		if due := gt.lastStat.Add(g.opts.Coalesce); now.Before(due) {
			later(due)
			continue
		}
		todo = append(todo, growthEval{name, gt.t.Files})
	}
	g.mu.Unlock()
	if len(todo) == 0 {
		return nil, next
	}

	sizes := make([]int64, len(todo))
	for i, e := range todo {
		sizes[i] = growthSize(e.files)
	}

	var sigs []policy.Signal
	l.evaluated = l.evaluated[:0]
	g.mu.Lock()
	for i, e := range todo {
		gt := g.targets[e.name]
		if gt == nil || !slices.Equal(gt.t.Files, e.files) {
			continue // removed or replaced meanwhile
		}
		size := sizes[i]
		gt.size = size
		gt.lastStat = now
		gt.dirty = false
		if !gt.hasBaseline {
			gt.baseline = size
			gt.hasBaseline = true
		}
		if size < gt.baseline {
			// Smaller than after the last compaction: something else
			// compacted, rotated away or truncated it. Growth counts from
			// here, and a pending firing is answered.
			gt.baseline = size
			gt.fired = false
		}
		fired := false
		grown := size - gt.baseline
		s := gt.t.Growth
		if !gt.fired && !gt.retryPending && grown > 0 && grown >= s.MinBytes && float64(grown) >= s.MinRatio*float64(gt.baseline) {
			gt.fired = true
			fired = true
			sigs = append(sigs, policy.Signal{
				Kind:    policy.KindGrowth,
				Targets: []string{e.name},
				Reason: fmt.Sprintf("grew %s since the last compaction (%s → %s; min_bytes %s, min_ratio %g)",
					humanize.IBytes(uint64(grown)), humanize.IBytes(uint64(gt.baseline)), humanize.IBytes(uint64(size)),
					humanize.IBytes(uint64(max(s.MinBytes, 0))), s.MinRatio),
				At: now,
			})
			g.logger.Debug("growth threshold crossed", "target", e.name, "bytes", size, "baseline", gt.baseline)
		}
		l.evaluated = append(l.evaluated, growthEvaluated{e.name, size, fired})
	}
	g.mu.Unlock()
	return sigs, next
}

// growthEvaluated is one evaluation, for the test hook.
type growthEvaluated struct {
	name  string
	size  int64
	fired bool
}

// afterEmit calls the evaluation hook once the signals are emitted.
func (l *growthLoop) afterEmit() {
	if l.g.hookEval == nil {
		return
	}
	for _, e := range l.evaluated {
		l.g.hookEval(e.name, e.size, e.fired)
	}
	l.evaluated = l.evaluated[:0]
}
