package policy

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
)

// Defaults applied to zero TargetSettings fields.
const (
	// DefaultBackoffBase is the wait after a first failure.
	DefaultBackoffBase = 30 * time.Second
	// DefaultBackoffMax caps the failure backoff; stuck targets are retried
	// this often.
	DefaultBackoffMax = 30 * time.Minute
	// StuckAfter is the number of consecutive failures after which a target
	// is reported stuck.
	StuckAfter = 3
)

// Errors of the engine. The first three are also what Replies carry in
// Report.Error (as their Error() text) when no compaction could run.
var (
	// ErrUnknownTarget: the signal named a target that is not configured.
	ErrUnknownTarget = errors.New("unknown target")
	// ErrTargetRemoved: a config reload removed the target before the
	// requested compaction could start.
	ErrTargetRemoved = errors.New("target removed from config")
	// ErrClosed: the engine shut down before the requested compaction could
	// start. Run also returns it when called after Shutdown.
	ErrClosed = errors.New("policy engine shut down")
	// ErrRunning is returned by a second call of Run.
	ErrRunning = errors.New("policy engine already running")
)

// Runner runs one decided compaction and returns its report.
// *executor.Executor implements it. The engine calls Run from a goroutine of
// its own, never twice at once for one target; Run must return promptly, with
// storage consistent, once ctx is done.
type Runner interface {
	Run(ctx context.Context, job executor.Job) backends.Report
}

// TargetSettings are the [policy] values of one target, with the target's
// own overrides applied.
type TargetSettings struct {
	// Debounce is the quiet time after the last routine signal before the
	// target is due.
	Debounce time.Duration
	// MaxWait caps the wait from the first pending signal; ≤ 0 is no cap.
	MaxWait time.Duration
	// Cooldown is the least time from the end of one compaction of the
	// target to the start of its next routine one.
	Cooldown time.Duration
	// BackoffBase is the wait after a first failure (0: DefaultBackoffBase);
	// it doubles with every further consecutive failure.
	BackoffBase time.Duration
	// BackoffMax caps the backoff and is the retry interval of a stuck
	// target (0: DefaultBackoffMax).
	BackoffMax time.Duration
}

// backoff returns the wait after the given number (≥ 1) of consecutive
// failures.
func (s TargetSettings) backoff(failures int) time.Duration {
	base, maxd := s.BackoffBase, s.BackoffMax
	if base <= 0 {
		base = DefaultBackoffBase
	}
	if maxd <= 0 {
		maxd = DefaultBackoffMax
	}
	if maxd < base {
		maxd = base
	}
	if failures >= StuckAfter {
		return maxd
	}
	d := base
	for i := 1; i < failures && d < maxd; i++ {
		d *= 2
	}
	return min(d, maxd)
}

// Config is the engine's configuration; Update replaces it.
type Config struct {
	// MaxConcurrent is the number of compactions at once over all targets;
	// values below 1 mean 1.
	MaxConcurrent int
	// Rate is the number of routine compactions started per hour over all
	// targets; ≤ 0 is unlimited.
	Rate float64
	// Burst is the token bucket's size; values below 1 mean 1.
	Burst int
	// Targets are the configured targets by name.
	Targets map[string]TargetSettings
}

// Observer is told of what the metrics count. Its methods are called
// synchronously with the engine's lock held: they must be quick and must not
// call the Engine. A nil Observer is a no-op.
type Observer interface {
	// Triggered is called for every Signal received, with its Kind
	// (triggers_total{kind}).
	Triggered(kind string)
	// Coalesced is called for every signal for target that was merged into
	// a run already pending, so did not cause a run of its own
	// (signals_coalesced_total{target}). A burst of n signals that yields
	// one compaction counts n-1.
	Coalesced(target string)
	// RateLimited is called once for every due routine run that the token
	// bucket holds back (rate_limited_total).
	RateLimited()
	// Stuck is called when a target becomes stuck and when it stops being
	// stuck (success, or removed from the config).
	Stuck(target string, stuck bool)
}

// pending is the work gathered for one future run of a target.
type pending struct {
	first, last time.Time // arrival of the first and the last signal
	signals     int
	urgent      bool
	urgentAt    time.Time // arrival of the first urgent signal
	requested   bool      // an urgent request (Signal.Requested): skips the failure backoff too
	seq         uint64    // arrival order, for fair ordering
	retry       bool      // a retry after a failure: due by backoff, not debounce, and takes no token (see plan.takesToken)
	prompt      bool      // a timer or retention signal: due without debounce
	promptAt    time.Time // arrival of the first such signal
	scan        bool
	trigger     string
	reason      string
	replies     []func(backends.Report)
	rateNoted   bool // Observer.RateLimited was called for it
}

func (p *pending) add(s Signal, now time.Time, seq uint64) {
	p.signals++
	p.last = now
	p.scan = p.scan || s.Scan
	if s.Reply != nil {
		p.replies = append(p.replies, s.Reply)
	}
	if s.Urgent && !p.urgent {
		p.urgent, p.urgentAt, p.seq = true, now, seq
		p.trigger, p.reason = s.Kind, s.Reason
	}
	if s.Urgent && s.Requested() {
		p.requested = true
	}
	if !s.Urgent && s.Prompt() && !p.prompt {
		p.prompt, p.promptAt = true, now
		if p.trigger != s.Kind && !p.urgent {
			p.trigger, p.reason = s.Kind, s.Reason
		}
	}
}

// activeRun is a job in progress.
type activeRun struct {
	job     executor.Job
	started time.Time
	replies []func(backends.Report)
}

// target is the engine's state of one target.
type target struct {
	name    string
	set     TargetSettings
	removed bool // removed from the config, kept until its run ends

	real, dry *pending
	run       *activeRun

	hasRun   bool      // a real compaction has ended
	lastEnd  time.Time // when the last real compaction ended
	failures int
	stuck    bool
	last     *backends.Report // of the last real compaction
}

// plan is when one pending run of a target may start, before the slot and
// token checks.
type plan struct {
	t     *target
	p     *pending
	dry   bool
	due   time.Time
	state string // the gate that ends at due: StateDebouncing, StateCooldown or StateBackingOff ("" for an urgent run due at once)
}

func (t *target) plan(p *pending, dry bool) plan {
	pl := plan{t: t, p: p, dry: dry}
	if p.urgent {
		// Urgent: no debounce, no cooldown. Only a request skips the
		// failure backoff; pressure signals wait it out.
		pl.due = p.urgentAt
		if !dry && !p.requested && t.failures > 0 {
			if b := t.lastEnd.Add(t.set.backoff(t.failures)); b.After(pl.due) {
				pl.due, pl.state = b, StateBackingOff
			}
		}
		return pl
	}
	pl.due, pl.state = p.first, StateDebouncing
	if !p.retry {
		pl.due = p.last.Add(t.set.Debounce)
		if t.set.MaxWait > 0 {
			if capAt := p.first.Add(t.set.MaxWait); capAt.Before(pl.due) {
				pl.due = capAt
			}
		}
		if p.prompt && p.promptAt.Before(pl.due) {
			// A timer or retention signal is not debounced: it is not a
			// write in progress to wait out.
			pl.due = p.promptAt
		}
	}
	if dry || !t.hasRun {
		return pl
	}
	if t.set.Cooldown > 0 {
		if c := t.lastEnd.Add(t.set.Cooldown); !c.Before(pl.due) {
			pl.due, pl.state = c, StateCooldown
		}
	}
	if t.failures > 0 {
		// After a failure the wait is the backoff's, even where a longer
		// cooldown is what ends it: the target is backing off, not resting
		// after a compaction.
		if b := t.lastEnd.Add(t.set.backoff(t.failures)); !b.Before(pl.due) {
			pl.due, pl.state = b, StateBackingOff
		} else if pl.state == StateCooldown {
			pl.state = StateBackingOff
		}
	}
	return pl
}

// takesToken reports whether the run pl must take a token of the shared
// bucket: a routine run of a target whose last real compaction did not fail.
// Urgent runs take none. Neither does any run of a failing target, whether
// the engine created it as a retry or a routine signal (a retention
// re-estimate, growth, the timer) arrived for the target while it failed or
// backed off: the failed attempt that began the streak took one token, the
// backoff paces the rest, and one failing target cannot empty the bucket
// that the others share.
func (pl plan) takesToken() bool {
	return !pl.p.urgent && !pl.p.retry && (pl.dry || pl.t.failures == 0)
}

// compare orders due runs: urgent first, then by due time, then by arrival,
// real runs before dry runs.
func (a plan) compare(b plan) int {
	if a.p.urgent != b.p.urgent {
		if a.p.urgent {
			return -1
		}
		return 1
	}
	if c := a.due.Compare(b.due); c != 0 {
		return c
	}
	if c := cmp.Compare(a.p.seq, b.p.seq); c != 0 {
		return c
	}
	if a.dry != b.dry {
		if b.dry {
			return -1
		}
		return 1
	}
	return cmp.Compare(a.t.name, b.t.name)
}

// next returns the pending run of t that will start first.
func (t *target) next() (plan, bool) {
	var best plan
	ok := false
	for _, c := range []struct {
		p   *pending
		dry bool
	}{{t.real, false}, {t.dry, true}} {
		if c.p == nil {
			continue
		}
		pl := t.plan(c.p, c.dry)
		if !ok || pl.compare(best) < 0 {
			best, ok = pl, true
		}
	}
	return best, ok
}

// reply is one Reply call to make once the lock is released.
type reply struct {
	fn  func(backends.Report)
	rep backends.Report
}

func callReplies(rs []reply) {
	for _, r := range rs {
		r.fn(r.rep)
	}
}

// errorReplies answers every reply of p with err.
func errorReplies(rs []reply, p *pending, name string, dry bool, err error) []reply {
	if p == nil {
		return rs
	}
	for _, fn := range p.replies {
		rs = append(rs, reply{fn, backends.Report{Target: name, Trigger: p.trigger, DryRun: dry, Error: err.Error()}})
	}
	return rs
}

// maxWarnedUnknown bounds the set of unknown target names already warned
// about, so a stream of made-up names cannot grow memory.
const maxWarnedUnknown = 256

// Engine is the policy engine. Create it with New, feed it with Signal, run
// it with Run, stop it with Shutdown. It is safe for concurrent use.
type Engine struct {
	runner Runner
	log    *slog.Logger
	kick   chan struct{} // wakes the loop; capacity 1

	mu            sync.Mutex
	obs           Observer
	targets       map[string]*target
	maxConcurrent int
	limitCfg      rate.Limit // rate.Inf when unlimited
	burstCfg      int
	limiter       *rate.Limiter // nil when unlimited
	active        int           // jobs running
	seq           uint64
	warned        map[string]bool
	started       bool // Run was called
	closed        bool // Shutdown was called
	jobCtx        context.Context
	jobCancel     context.CancelFunc
	wg            sync.WaitGroup // running jobs
	wakeups       int            // loop iterations, for tests
}

// New returns an engine that hands its compactions to run. A nil logger
// discards. Signals are accepted at once; nothing runs before Run.
func New(cfg Config, run Runner, logger *slog.Logger) *Engine {
	if run == nil {
		panic("policy.New: nil Runner")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	e := &Engine{
		runner:  run,
		log:     logger,
		kick:    make(chan struct{}, 1),
		targets: make(map[string]*target),
		warned:  make(map[string]bool),
	}
	e.Update(cfg)
	return e
}

// SetObserver sets the metrics observer; nil turns it off.
func (e *Engine) SetObserver(o Observer) {
	e.mu.Lock()
	e.obs = o
	e.mu.Unlock()
}

// The observer calls; e.mu must be held.
func (e *Engine) triggered(kind string) {
	if e.obs != nil {
		e.obs.Triggered(kind)
	}
}

func (e *Engine) coalesced(name string) {
	if e.obs != nil {
		e.obs.Coalesced(name)
	}
}

func (e *Engine) rateLimited() {
	if e.obs != nil {
		e.obs.RateLimited()
	}
}

func (e *Engine) setStuck(name string, stuck bool) {
	if e.obs != nil {
		e.obs.Stuck(name, stuck)
	}
}

// wake makes the loop reconsider; it never blocks.
func (e *Engine) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// Signal hands the engine a signal. It never blocks for long and is safe
// from any goroutine. Signal.At is informational: debounce and max_wait are
// measured from when Signal is called. A target named twice in one signal
// counts once. Replies for targets that cannot be served (unknown, engine
// shut down) are called before Signal returns.
func (e *Engine) Signal(s Signal) {
	now := time.Now()
	var out []reply
	e.mu.Lock()
	e.triggered(s.Kind)
	if len(s.Targets) == 0 {
		e.log.Warn("signal names no targets; ignored", "kind", s.Kind, "reason", s.Reason)
	}
	for i, name := range s.Targets {
		if slices.Contains(s.Targets[:i], name) {
			continue
		}
		errRep := func(err error) {
			if s.Reply != nil {
				out = append(out, reply{s.Reply, backends.Report{Target: name, Trigger: s.Kind, DryRun: s.DryRun, Error: err.Error()}})
			}
		}
		if e.closed {
			errRep(ErrClosed)
			continue
		}
		t := e.targets[name]
		if t == nil || t.removed {
			if !e.warned[name] && len(e.warned) < maxWarnedUnknown {
				e.warned[name] = true
				e.log.Warn("signal for unknown target", "target", name, "kind", s.Kind, "reason", s.Reason)
			}
			errRep(ErrUnknownTarget)
			continue
		}
		slot := &t.real
		if s.DryRun {
			slot = &t.dry
		}
		e.seq++
		if *slot == nil {
			*slot = &pending{first: now, seq: e.seq, trigger: s.Kind, reason: s.Reason}
			(*slot).add(s, now, e.seq)
		} else {
			(*slot).add(s, now, e.seq)
			e.coalesced(name)
		}
	}
	e.mu.Unlock()
	callReplies(out)
	e.wake()
}

// Update applies a reloaded config: targets added, removed and changed take
// effect at once. A removed target's pending replies are answered with
// ErrTargetRemoved; a compaction of it already running finishes.
func (e *Engine) Update(cfg Config) {
	now := time.Now()
	var out []reply
	e.mu.Lock()
	e.maxConcurrent = max(cfg.MaxConcurrent, 1)
	limit, burst := rate.Inf, max(cfg.Burst, 1)
	if cfg.Rate > 0 && !math.IsInf(cfg.Rate, 1) {
		limit = rate.Limit(cfg.Rate / 3600)
	}
	switch {
	case limit == rate.Inf:
		e.limiter = nil
	case e.limiter == nil:
		e.limiter = rate.NewLimiter(limit, burst) // starts full
	default:
		if limit != e.limitCfg {
			e.limiter.SetLimitAt(now, limit)
		}
		if burst != e.burstCfg {
			e.limiter.SetBurstAt(now, burst)
		}
	}
	e.limitCfg, e.burstCfg = limit, burst

	for name, t := range e.targets {
		if _, ok := cfg.Targets[name]; ok || t.removed {
			continue
		}
		t.removed = true
		out = errorReplies(out, t.real, name, false, ErrTargetRemoved)
		out = errorReplies(out, t.dry, name, true, ErrTargetRemoved)
		t.real, t.dry = nil, nil
		if t.stuck {
			e.setStuck(name, false)
		}
		if t.run == nil {
			delete(e.targets, name)
		}
		e.log.Info("target removed", "target", name)
	}
	for name, s := range cfg.Targets {
		t := e.targets[name]
		if t == nil {
			e.targets[name] = &target{name: name, set: s}
			continue
		}
		t.set = s
		if t.removed {
			t.removed = false
			if t.stuck {
				e.setStuck(name, true)
			}
		}
	}
	clear(e.warned)
	e.mu.Unlock()
	callReplies(out)
	e.wake()
}

// tokenWait returns how long until the bucket holds n tokens; 0 if it holds
// them now. e.mu must be held.
func (e *Engine) tokenWait(now time.Time, n int) time.Duration {
	if e.limiter == nil {
		return 0
	}
	const epsilon = 1e-9 // float rounding of the bucket's arithmetic
	tok := e.limiter.TokensAt(now)
	if tok >= float64(n)-epsilon {
		return 0
	}
	d := time.Duration(math.Round((float64(n) - tok) / float64(e.limitCfg) * float64(time.Second)))
	return max(d, time.Nanosecond)
}

// plansLocked returns the pending runs of targets not running that are due
// at now, in the order they should start, and the earliest due time of the
// others (zero if none).
func (e *Engine) plansLocked(now time.Time) (due []plan, next time.Time) {
	for _, t := range e.targets {
		if t.run != nil || t.removed {
			continue
		}
		for _, c := range []struct {
			p   *pending
			dry bool
		}{{t.real, false}, {t.dry, true}} {
			if c.p == nil {
				continue
			}
			pl := t.plan(c.p, c.dry)
			if pl.due.After(now) {
				if next.IsZero() || pl.due.Before(next) {
					next = pl.due
				}
				continue
			}
			due = append(due, pl)
		}
	}
	slices.SortFunc(due, plan.compare)
	return due, next
}

// scheduleLocked starts every run that may start now and returns when the
// loop must look again (zero: only when something changes).
func (e *Engine) scheduleLocked(now time.Time) time.Time {
	due, next := e.plansLocked(now)
	later := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	for _, pl := range due {
		if e.active >= e.maxConcurrent {
			break // a finishing job wakes the loop
		}
		if pl.t.run != nil {
			continue // its other pending run started in this pass
		}
		if pl.takesToken() {
			if w := e.tokenWait(now, 1); w > 0 {
				if !pl.p.rateNoted {
					pl.p.rateNoted = true
					e.rateLimited()
					e.log.Debug("compaction rate limited", "target", pl.t.name, "until", now.Add(w))
				}
				later(now.Add(w))
				continue
			}
			if e.limiter != nil {
				e.limiter.ReserveN(now, 1)
			}
		}
		e.startLocked(pl, now)
	}
	return next
}

// startLocked starts the run pl.
func (e *Engine) startLocked(pl plan, now time.Time) {
	t, p := pl.t, pl.p
	job := executor.Job{Target: t.name, Trigger: p.trigger, Reason: p.reason, DryRun: pl.dry, Scan: p.scan}
	run := &activeRun{job: job, started: now, replies: p.replies}
	if pl.dry {
		t.dry = nil
	} else {
		t.real = nil
	}
	t.run = run
	e.active++
	e.wg.Add(1)
	e.log.Debug("starting compaction", "target", t.name, "trigger", job.Trigger, "reason", job.Reason,
		"dry_run", job.DryRun, "scan", job.Scan, "signals", p.signals)
	go e.execute(t, run)
}

// execute runs one job and records its outcome.
func (e *Engine) execute(t *target, run *activeRun) {
	defer e.wg.Done()
	rep := e.runner.Run(e.jobCtx, run.job)
	if rep.Target == "" {
		rep.Target = run.job.Target
	}
	now := time.Now()
	e.mu.Lock()
	e.finishLocked(t, run, rep, now)
	e.mu.Unlock()
	for _, fn := range run.replies {
		fn(rep)
	}
	e.wake()
}

// finishLocked records the end of run.
func (e *Engine) finishLocked(t *target, run *activeRun, rep backends.Report, now time.Time) {
	t.run = nil
	e.active--
	if t.removed && e.targets[t.name] == t {
		delete(e.targets, t.name)
	}
	if run.job.DryRun {
		return
	}
	t.hasRun, t.lastEnd = true, now
	last := rep
	t.last = &last
	switch {
	case rep.Error != "":
		t.failures++
		if t.failures >= StuckAfter && !t.stuck {
			t.stuck = true
			e.setStuck(t.name, true)
			e.log.Warn("target is stuck: compaction keeps failing", "target", t.name,
				"failures", t.failures, "error", rep.Error, "retry_every", t.set.backoff(t.failures))
		}
	case rep.Skipped != "":
		// Not a failure, not a success.
	default:
		if t.stuck {
			e.setStuck(t.name, false)
			e.log.Info("target recovered: compaction succeeded", "target", t.name, "after_failures", t.failures)
		}
		t.failures, t.stuck = 0, false
	}
	if t.failures == 0 || t.removed || e.closed {
		return
	}
	if t.real == nil {
		e.seq++
		t.real = &pending{first: now, last: now, seq: e.seq, retry: true,
			trigger: run.job.Trigger, reason: retryReason(run.job.Reason), scan: run.job.Scan}
	}
	if rep.Error == "" {
		// A skip between failures: the backoff stays that of the failures.
		e.log.Info("compaction skipped; will retry", "target", t.name, "failures", t.failures,
			"skipped", rep.Skipped, "retry_at", now.Add(t.set.backoff(t.failures)))
		return
	}
	e.log.Info("compaction failed; will retry", "target", t.name, "failures", t.failures,
		"error", rep.Error, "retry_at", now.Add(t.set.backoff(t.failures)))
}

// retryReason is the Job.Reason of an automatic retry.
func retryReason(reason string) string {
	const prefix = "retry after failure"
	if reason == "" || strings.HasPrefix(reason, prefix) {
		return prefix
	}
	return prefix + ": " + reason
}

// Run is the engine's loop: it starts compactions as they fall due. It
// returns nil once the engine has stopped: after Shutdown, when running
// compactions have ended; or when ctx is done, after cancelling running
// compactions and waiting for them to return. For a graceful stop, call
// Shutdown with a deadline before ctx is done. Jobs get a context that keeps
// ctx's values but is cancelled only by the engine.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	if e.started {
		e.mu.Unlock()
		return ErrRunning
	}
	e.started = true
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	e.jobCtx, e.jobCancel = context.WithCancel(context.WithoutCancel(ctx))
	e.mu.Unlock()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			break
		}
		e.wakeups++
		next := e.scheduleLocked(time.Now())
		e.mu.Unlock()
		if next.IsZero() {
			timer.Stop()
		} else {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			_ = e.Shutdown(ctx) // ctx is done: cancels running jobs at once
			return nil
		case <-e.kick:
		case <-timer.C:
		}
	}
	// Shutdown was called; it cancels jobs at its deadline. Wait for them.
	done := e.idle()
	select {
	case <-done:
	case <-ctx.Done():
		e.jobCancel()
		<-done
	}
	return nil
}

// idle returns a channel closed once no job runs. Only valid once closed is
// set (no job can start any more).
func (e *Engine) idle() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		e.wg.Wait()
		close(done)
	}()
	return done
}

// Shutdown stops the engine: it accepts no more signals (their replies get
// ErrClosed), answers the replies of pending runs with ErrClosed, starts
// nothing new, and waits for running compactions until they end or ctx is
// done. Then it cancels them, waits for them to return (the Runner honours
// its ctx) and returns ctx's error. It may be called more than once.
func (e *Engine) Shutdown(ctx context.Context) error {
	var out []reply
	e.mu.Lock()
	if !e.closed {
		e.closed = true
		for _, t := range e.targets {
			out = errorReplies(out, t.real, t.name, false, ErrClosed)
			out = errorReplies(out, t.dry, t.name, true, ErrClosed)
			t.real, t.dry = nil, nil
		}
		e.log.Info("policy engine shutting down", "running", e.active)
	}
	cancel := e.jobCancel
	e.mu.Unlock()
	callReplies(out)
	e.wake()

	done := e.idle()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		select {
		case <-done:
		default:
			e.log.Warn("shutdown deadline reached; cancelling running compactions", "error", ctx.Err())
			if cancel != nil {
				cancel()
			}
			<-done
			err = ctx.Err()
		}
	}
	if cancel != nil {
		cancel()
	}
	return err
}
