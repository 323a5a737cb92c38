package main

import (
	"fmt"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/triggers"
)

// Warning kinds of the self-diagnosis: the `kind` label of
// papyra_compactor_warnings.
const (
	warnIneffective   = "ineffective_compaction"
	warnNoRetention   = "no_retention"
	warnTimerTooSlow  = "timer_slower_than_retention"
	warnNothingToFree = "disk_pressure_nothing_reclaimable"
	warnStuck         = "stuck"
	// warnSlowStartup: Papyra would take long to start on this target.
	warnSlowStartup = "slow_startup_scan"
	// warnReplaced: another process keeps replacing the target's file.
	warnReplaced = "target_replaced"
	// warnRedisPressure: Redis memory pressure that compactions of the
	// target did not relieve.
	warnRedisPressure = "redis_memory_not_relieved"
)

// warnOrder is the order of a target's warnings in /status.
var warnOrder = []string{warnNoRetention, warnTimerTooSlow, warnIneffective, warnNothingToFree,
	warnStuck, warnSlowStartup, warnReplaced, warnRedisPressure}

// ineffectiveRuns is how many compactions in a row reclaiming < 1 % while
// the size grows make a target "ineffective".
const ineffectiveRuns = 3

// Papyra's startup scan. Papyra reads and parses the whole of a json file
// (every segment of a rotating set) when it starts, one json.loads per
// line, before it serves. Its cost is estimated from the only measurement
// of Papyra reading a file (BENCHMARKS.md, "External anchor"): its own
// compact() of a 196 MB, 1,000,000-record file took 143 s (and 158 s) on a
// 2-core machine. compact() is that same read of every line, plus the
// rewrite of the tenth it kept, so the figures below are on the high side
// by at most that tenth.
const (
	papyraScanSecondsPerByte   = 143.0 / 196e6 // ≈ 0.73 s per MB
	papyraScanSecondsPerRecord = 143.0 / 1e6   // 143 µs per record
	// startupScanWarn is the estimate above which the warning is raised;
	// it is cleared once the estimate falls below startupScanClear of it
	// (a file that grows past it between compactions and is brought just
	// under it does not raise and clear it every cycle).
	startupScanWarn  = 60 * time.Second
	startupScanClear = 0.8
)

// Replacements: a target file whose inode another process changes (Papyra's
// recovery rewriting or quarantining it at every restart of a crash loop,
// Papyra's own compaction running alongside, an operator's script) is
// counted; more than replacedMax in replacedWindow raise the warning.
const (
	replacedMax    = 3
	replacedWindow = time.Hour
)

// redisSettle is how long after a compaction the Redis memory ratio is
// judged: two readings of the redis_memory trigger (its interval) and the
// time one INFO may take, so that the ratio seen was read after the
// compaction ended.
func redisSettle(interval time.Duration) time.Duration {
	return 2*interval + 10*time.Second
}

// diagnosis watches for the seed's warning signs that only show at run
// time: a target that keeps growing while its compactions reclaim almost
// nothing (from reports), a target Papyra would take long to start on, a
// target file another process keeps replacing, Redis memory pressure that
// compactions do not relieve (from runtime, every refresh). The static
// signs come from the config; status combines both.
type diagnosis struct {
	metrics *executor.Metrics
	log     *slog.Logger

	// runMu serialises runtime (one observation at a time, in order).
	runMu sync.Mutex

	mu      sync.Mutex
	streak  map[string]int   // consecutive ineffective compactions
	lastBef map[string]int64 // before_bytes of the previous compaction
	active  map[string]map[string]string
	success map[string]time.Time // end of the last successful real compaction
	// reports counts every report of a target (compaction, failure, skip,
	// dry run: each may have run a recovery that swaps files), so that a
	// file change between two observations is put down to the watcher.
	reports  map[string]int
	files    map[string]*fileDiag
	measured map[string]recordMeasure
	redis    map[string]*redisDiag
}

// fileDiag is what runtime keeps of a json or rotating target.
type fileDiag struct {
	key      string      // the files observed: a change of path starts afresh
	ino      uint64      // inode of the active file at the last observation; 0 when unknown
	reports  int         // reports at the last observation
	replaced []time.Time // replacements by another process in the window
}

// recordMeasure is the last record count a report measured, with the
// bytes it was measured at, to estimate the count at another size.
type recordMeasure struct {
	records, bytes int64
}

// redisDiag is what runtime keeps of a redis target.
type redisDiag struct {
	// pressureSince is when the ratio was first seen at or above
	// high_percent in this episode of pressure (which ends below
	// low_percent, as for the trigger); zero outside one.
	pressureSince time.Time
	// compacted is when the last successful real compaction that ran
	// during the pressure (or for it: trigger redis_memory) ended.
	compacted time.Time
}

func newDiagnosis(m *executor.Metrics, log *slog.Logger) *diagnosis {
	return &diagnosis{metrics: m, log: log, streak: map[string]int{},
		lastBef: map[string]int64{}, active: map[string]map[string]string{},
		success: map[string]time.Time{}, reports: map[string]int{},
		files: map[string]*fileDiag{}, measured: map[string]recordMeasure{},
		redis: map[string]*redisDiag{}}
}

// observe is subscribed to the executor's reports.
func (g *diagnosis) observe(r backends.Report) {
	g.mu.Lock()
	g.reports[r.Target]++
	if r.Error == "" && r.Skipped == "" {
		// The record count a report measured: the file as it was for a
		// dry run, as it was left for a compaction.
		m := recordMeasure{r.AfterRecords, -1}
		if r.AfterBytes != nil {
			m.bytes = *r.AfterBytes
		}
		if r.DryRun {
			m = recordMeasure{r.BeforeRecords, -1}
			if r.BeforeBytes != nil {
				m.bytes = *r.BeforeBytes
			}
		}
		if m.bytes > 0 {
			g.measured[r.Target] = m
		}
	}
	end := r.StartedAt.Add(time.Duration(r.DurationMS) * time.Millisecond)
	if rd := g.redis[r.Target]; rd != nil && r.Error == "" && r.Skipped == "" && !r.DryRun &&
		(!rd.pressureSince.IsZero() || r.Trigger == policy.KindRedisMemory) {
		rd.compacted = end
	}
	if r.Error != "" || r.Skipped != "" || r.DryRun || r.BeforeBytes == nil || r.ReclaimedBytes == nil {
		g.mu.Unlock()
		return
	}
	g.success[r.Target] = end
	before := *r.BeforeBytes
	prev, seen := g.lastBef[r.Target]
	g.lastBef[r.Target] = before
	ineffective := before > 0 && float64(*r.ReclaimedBytes) < 0.01*float64(before) && (!seen || before > prev)
	if ineffective {
		g.streak[r.Target]++
	} else {
		g.streak[r.Target] = 0
	}
	n := g.streak[r.Target]
	g.mu.Unlock()
	g.set(r.Target, warnIneffective, n >= ineffectiveRuns,
		fmt.Sprintf("size keeps growing while the last %d compactions reclaimed < 1%%: retention is likely missing or too loose", n))
}

// set turns a warning on or off, logging once when it appears and keeping
// the metric in step.
func (g *diagnosis) set(target, kind string, on bool, text string) {
	g.mu.Lock()
	m := g.active[target]
	_, was := m[kind]
	if on {
		if m == nil {
			m = map[string]string{}
			g.active[target] = m
		}
		m[kind] = text
	} else {
		delete(m, kind)
	}
	g.mu.Unlock()
	if on != was {
		g.metrics.SetWarning(target, kind, on)
		if on {
			g.log.Warn("self-diagnosis: "+text, "target", target, "warning", kind)
		} else {
			g.log.Info("self-diagnosis: warning cleared", "target", target, "warning", kind)
		}
	}
}

// isOn reports whether a warning is active.
func (g *diagnosis) isOn(target, kind string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.active[target][kind]
	return ok
}

// warnings returns the active warnings of a target.
func (g *diagnosis) warnings(target string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, k := range warnOrder {
		if t, ok := g.active[target][k]; ok {
			out = append(out, t)
		}
	}
	return out
}

// lastSuccess is when the last successful real compaction of target ended.
func (g *diagnosis) lastSuccess(target string) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.success[target]
}

// forget drops a removed target's warnings.
func (g *diagnosis) forget(target string) {
	g.mu.Lock()
	delete(g.active, target)
	delete(g.streak, target)
	delete(g.lastBef, target)
	delete(g.success, target)
	delete(g.reports, target)
	delete(g.files, target)
	delete(g.measured, target)
	delete(g.redis, target)
	g.mu.Unlock()
}

// fileObs is one observation of a file target's files.
type fileObs struct {
	files []string // active file first
	ino   uint64   // the active file's inode; 0 when it is missing
	inos  []uint64 // inodes of every file present
	bytes int64    // summed sizes of the files present
}

// observeFiles stats a target's files (a few syscalls).
func observeFiles(files []string) fileObs {
	o := fileObs{files: files}
	for i, p := range files {
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		o.bytes += fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			o.inos = append(o.inos, st.Ino)
			if i == 0 {
				o.ino = st.Ino
			}
		}
	}
	return o
}

// runtime refreshes the runtime warnings of every target: it observes the
// files of json and rotating targets and the Redis memory ratio of redis
// targets. running says whether a target is being compacted now (read
// before and after the files are observed: a compaction that swaps a file
// meanwhile is seen running by one of the two reads, or has reported).
func (g *diagnosis) runtime(now time.Time, targets []triggers.Target, running func() map[string]bool,
	ratios map[string]float64) {
	g.runMu.Lock()
	defer g.runMu.Unlock()
	type counted struct {
		reports int
		running bool
	}
	snapshot := func() map[string]counted {
		run := running()
		g.mu.Lock()
		defer g.mu.Unlock()
		out := make(map[string]counted, len(targets))
		for _, t := range targets {
			out[t.Name] = counted{g.reports[t.Name], run[t.Name]}
		}
		return out
	}
	before := snapshot()
	obs := make(map[string]fileObs)
	for _, t := range targets {
		if len(t.Files) > 0 && (t.Backend == backends.KindJSON || t.Backend == backends.KindRotating) {
			obs[t.Name] = observeFiles(t.Files)
		}
	}
	after := snapshot()
	for _, t := range targets {
		switch t.Backend {
		case backends.KindJSON, backends.KindRotating:
			o, ok := obs[t.Name]
			if !ok {
				continue
			}
			b, a := before[t.Name], after[t.Name]
			g.fileObserved(now, t.Name, o, b.running || a.running || a.reports != b.reports, a.reports)
		case backends.KindRedis:
			ratio, ok := ratios[t.Name]
			g.redisObserved(now, t, ratio, ok)
		}
	}
}

// fileObserved takes one observation of a file target. busy is true when
// the watcher compacted it (or was compacting it) around the observation;
// reports is the target's report count.
func (g *diagnosis) fileObserved(now time.Time, target string, o fileObs, busy bool, reports int) {
	key := strings.Join(o.files, "\x00")
	g.mu.Lock()
	fd := g.files[target]
	if fd == nil || fd.key != key {
		fd = &fileDiag{key: key, ino: o.ino, reports: reports}
		g.files[target] = fd
	}
	// Whatever changed since the last observation is the watcher's when
	// it reported meanwhile (its swap, its recovery) or runs now.
	ours := busy || reports != fd.reports
	fd.reports = reports
	switch {
	case ours:
		fd.ino = o.ino
	case o.ino == 0:
		// Missing now (deleted, or moved aside and not yet recreated by
		// the next write): the inode it had is kept to compare with.
	default:
		// A rotation moves the active file to .1: its inode is still in
		// the set. Any other new inode was put there by someone else.
		if fd.ino != 0 && o.ino != fd.ino && !containsIno(o.inos, fd.ino) {
			fd.replaced = append(fd.replaced, now)
		}
		fd.ino = o.ino
	}
	for len(fd.replaced) > 0 && now.Sub(fd.replaced[0]) >= replacedWindow {
		fd.replaced = fd.replaced[1:]
	}
	n := len(fd.replaced)
	m, measured := g.measured[target]
	g.mu.Unlock()

	g.set(target, warnReplaced, n > replacedMax,
		fmt.Sprintf("replaced by another process %d times in the last hour (more than %d): Papyra's recovery rewriting or quarantining it at each restart (a crash loop?), or another compactor or script; check Papyra's logs",
			n, replacedMax))

	// Papyra's startup scan of what is there now.
	records := int64(-1)
	if measured && m.bytes > 0 {
		records = int64(math.Round(float64(m.records) * float64(o.bytes) / float64(m.bytes)))
	}
	est := startupScanEstimate(o.bytes, records)
	on := est > startupScanWarn || g.isOn(target, warnSlowStartup) && est >= time.Duration(startupScanClear*float64(startupScanWarn))
	what := humanize.IBytes(uint64(o.bytes))
	if records >= 0 {
		what += fmt.Sprintf(", ~%s records", humanize.Comma(records))
	}
	g.set(target, warnSlowStartup, on,
		fmt.Sprintf("Papyra's startup scan of this target would take about %s (%s; Papyra reads and parses all of it before it serves), over %s: tighten retention or compact more often",
			est.Round(time.Second), what, startupScanWarn))
}

// startupScanEstimate is the time Papyra takes to read and parse bytes
// holding records records (-1: unknown) at start: the larger of the
// estimates by size and by count (short records cost more per byte).
func startupScanEstimate(bytes, records int64) time.Duration {
	s := float64(bytes) * papyraScanSecondsPerByte
	if records > 0 {
		s = max(s, float64(records)*papyraScanSecondsPerRecord)
	}
	return time.Duration(s * float64(time.Second))
}

func containsIno(inos []uint64, ino uint64) bool {
	for _, i := range inos {
		if i == ino {
			return true
		}
	}
	return false
}

// redisObserved takes one reading of a redis target's memory ratio (ok
// false: its server did not answer the last reading; the state is kept).
func (g *diagnosis) redisObserved(now time.Time, t triggers.Target, ratio float64, ok bool) {
	high, low, interval := t.RedisMemory.HighPercent, t.RedisMemory.LowPercent, t.RedisMemory.Interval
	// The trigger's defaults, for settings left zero.
	if high <= 0 {
		high = 80
	}
	if low <= 0 || low > high {
		low = min(70, high)
	}
	if interval <= 0 {
		interval = 10 * time.Second
	}
	if !ok {
		return
	}
	pct := ratio * 100
	g.mu.Lock()
	rd := g.redis[t.Name]
	if rd == nil {
		rd = &redisDiag{}
		g.redis[t.Name] = rd
	}
	switch {
	case pct >= high && rd.pressureSince.IsZero():
		rd.pressureSince = now
	case pct < low:
		rd.pressureSince, rd.compacted = time.Time{}, time.Time{}
	}
	compacted := rd.compacted
	under := !rd.pressureSince.IsZero()
	g.mu.Unlock()
	was := g.isOn(t.Name, warnRedisPressure)
	on := under && !compacted.IsZero() && now.Sub(compacted) >= redisSettle(interval) &&
		(pct >= high || was) // once on, cleared below low_percent
	addr, err := triggers.RedisServerAddr(t.RedisURL)
	if err != nil {
		addr = "server"
	}
	g.set(t.Name, warnRedisPressure, on,
		fmt.Sprintf("Redis %s used memory at %.1f%% (high_percent %g%%) was not relieved by the compaction of this target that ended at %s: retention keeps more than maxmemory allows, or other data fills the memory",
			addr, pct, high, compacted.UTC().Format(time.RFC3339)))
}

// diagnoseRuntime refreshes the runtime warnings of every target (with the
// others, by updateDiagnosis: every size refresh and every /status).
func (d *daemon) diagnoseRuntime(now time.Time) {
	running := func() map[string]bool {
		out := map[string]bool{}
		for _, s := range d.engine.Status() {
			if s.State == policy.StateRunning {
				out[s.Target] = true
			}
		}
		return out
	}
	d.diag.runtime(now, d.triggerTargets(d.config()), running, d.redisMem.Ratios())
}
