package triggers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/shirou/gopsutil/v4/disk"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/policy"
)

// diskDefaultHistory is how many usage samples per filesystem the trend is
// fitted over by default.
const diskDefaultHistory = 10

// diskMinTrendSamples is the fewest samples a trend is fitted to.
const diskMinTrendSamples = 3

// DiskOptions tunes a Disk trigger. The zero value is the production setting.
type DiskOptions struct {
	// Usage returns the used and total bytes of the filesystem holding path.
	// nil uses gopsutil's disk.Usage with total = used + free, so that the
	// percentage is df's (blocks reserved for root are not counted as
	// available).
	Usage func(path string) (used, total uint64, err error)
	// History is the number of usage samples per filesystem the trend is
	// fitted over (default 10, at least 3).
	History int
	// CanCollapse reports whether the filesystem holding path can remove
	// a range of a file in place (FALLOC_FL_COLLAPSE_RANGE): there, targets
	// with method auto compact in place. nil uses fsx.CanCollapse (ext4,
	// XFS).
	CanCollapse func(path string) bool
}

// FSPressure is the state of one filesystem that holds file targets, for
// status pages.
type FSPressure struct {
	// Mountpoint is where the filesystem is mounted (the metric label).
	Mountpoint string `json:"mountpoint"`
	// Device is the st_dev the filesystem's targets share.
	Device uint64 `json:"device"`
	// UsedPercent is the last sampled usage, 0–100.
	UsedPercent float64 `json:"used_percent"`
	// UnderPressure is true from the moment usage reached high_percent (or
	// the trend predicted it would) until it fell below low_percent.
	UnderPressure bool `json:"under_pressure"`
	// NothingReclaimable is true while under pressure when every target
	// concerned has been compacted since pressure began and reclaimed about
	// nothing: compaction cannot help, an operator must.
	NothingReclaimable bool `json:"nothing_reclaimable"`
	// Predicted is true when the usage trend projects high_percent within
	// predict_horizon while usage is still below it.
	Predicted bool `json:"predicted"`
	// Targets are the targets on the filesystem; while under pressure, those
	// under pressure, in the order they are compacted (see Disk).
	Targets []string `json:"targets"`
}

// Disk is the disk-pressure trigger. Every interval it samples the usage of
// each filesystem that holds a file target (targets are grouped by the
// device of their directory, so one query serves every target on one
// filesystem) and emits an urgent policy.KindDisk signal while a filesystem
// is under pressure, naming its targets in an order where each compaction
// frees room for the next (below).
//
// Pressure uses hysteresis per target (targets may override the
// thresholds): it begins when usage reaches HighPercent, or when a linear
// fit of the recent samples projects HighPercent within PredictHorizon (0
// turns prediction off), and ends only when usage is below LowPercent and
// no longer predicted to cross. While under pressure a signal is emitted at
// every sample for the targets that may still have something reclaimable.
// What a target would reclaim is estimated (the retention trigger's
// estimate when it is of the target as it is now; otherwise diskEstimate:
// the target's size times the fraction its last successful compaction
// reclaimed, its size when it has none, and at least what it grew since its
// last compaction, or what the retention trigger's estimate found before
// the target grew, whichever is more); its survivors are its size less
// that. The order:
//
//  1. Targets that will compact in place (method auto on a filesystem that
//     can collapse a range: ext4, XFS), most reclaimable first: they need
//     no free space, and free what they drop.
//  2. The others, which copy their survivors, fewest survivors first: each
//     copy needs the least room and frees room for the next.
//
// A copying target whose survivors, with backends.CopyMargin, exceed the
// filesystem's free space (total less used, as Usage reports them) is left
// out until others have freed room, logged once when it is left out and
// once when it fits again; a compaction would refuse it anyway
// (backends.ErrNoSpace). Left out too are empty targets and those whose
// last compaction since pressure began reclaimed about nothing (at most
// 0.1% of its size before). When no target is left while pressure remains,
// that is logged once per episode as an error (nothing to reclaim, or no
// copy that fits) and nothing to reclaim is shown by Pressure; the timer
// trigger still compacts them.
type Disk struct {
	logger      *slog.Logger
	usage       func(path string) (used, total uint64, err error)
	canCollapse func(path string) bool
	history     int

	mu      sync.Mutex
	targets map[string]*diskTarget
	order   []string // target names in config order
	fss     map[uint64]*diskFS
	wake    chan struct{}

	// estimates, if set, returns the retention trigger's estimates by
	// target: they order targets under pressure and leave out those with
	// about nothing reclaimable.
	estimates func() map[string]backends.Estimate

	// locateFailed is Run's own: targets whose filesystem could not be
	// found, logged once.
	locateFailed map[string]bool
}

// diskTarget is what Disk keeps per target.
type diskTarget struct {
	t Target
	// ratio is reclaimed/before of the last successful compaction; valid
	// when hasRatio.
	ratio    float64
	hasRatio bool
	// after is AfterBytes of the last successful compaction, -1 unknown.
	after int64
	// pressured is the target's hysteresis state.
	pressured bool
	// exhausted: a compaction since pressure began reclaimed about nothing.
	exhausted bool
	// reclaimable is the last estimate, for ordering; survivors is the
	// target's size less it: what a copy writes.
	reclaimable, survivors int64
	// inPlace: the target will compact in place (method auto on a
	// filesystem that can collapse a range).
	inPlace bool
	// noRoom: left out of the signals because a copy of its survivors does
	// not fit the free space (logged when it changes).
	noRoom bool
}

// diskFS is what Disk keeps per filesystem (device).
type diskFS struct {
	dev        uint64
	mountpoint string
	probe      string // an existing directory on the filesystem, to query
	interval   time.Duration
	last       time.Time // last sample attempt
	samples    []diskSample
	percent    float64
	sampled    bool
	predicted  bool
	nothing    bool // nothing reclaimable was logged for this episode
	noRoom     bool // no copy that fits was logged for this episode
	errLogged  bool
	targets    []string // names on this fs, config order
	status     []string // FSPressure.Targets
}

// diskSample is one usage measurement.
type diskSample struct {
	at      time.Time
	percent float64
}

// Disk is a Source.
var _ Source = (*Disk)(nil)

// NewDisk returns a Disk trigger for targets (those without Files, or with
// Disk.Interval or Disk.HighPercent 0, are ignored). Options are optional; at most the first is
// used.
func NewDisk(targets []Target, logger *slog.Logger, opts ...DiskOptions) *Disk {
	if logger == nil {
		logger = slog.Default()
	}
	var o DiskOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Usage == nil {
		o.Usage = diskGopsutilUsage
	}
	if o.CanCollapse == nil {
		o.CanCollapse = fsx.CanCollapse
	}
	if o.History <= 0 {
		o.History = diskDefaultHistory
	}
	o.History = max(o.History, diskMinTrendSamples)
	d := &Disk{
		logger:      logger.With("trigger", policy.KindDisk),
		usage:       o.Usage,
		canCollapse: o.CanCollapse,
		history:     o.History,
		targets:     make(map[string]*diskTarget),
		fss:         make(map[uint64]*diskFS),
		wake:        make(chan struct{}, 1),

		locateFailed: make(map[string]bool),
	}
	d.SetTargets(targets)
	return d
}

// diskGopsutilUsage is the production usage function.
func diskGopsutilUsage(path string) (used, total uint64, err error) {
	u, err := disk.Usage(path)
	if err != nil {
		return 0, 0, fmt.Errorf("disk usage of %s: %w", path, err)
	}
	return u.Used, u.Used + u.Free, nil
}

// SetTargets replaces the target list; the next sample uses it. A target
// whose settings changed keeps its reports and pressure state.
func (d *Disk) SetTargets(targets []Target) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.targets
	d.targets = make(map[string]*diskTarget, len(targets))
	d.order = d.order[:0]
	for _, t := range targets {
		if _, dup := d.targets[t.Name]; dup {
			continue
		}
		dt := old[t.Name]
		if dt == nil {
			dt = &diskTarget{after: -1}
		}
		dt.t = t
		d.targets[t.Name] = dt
		d.order = append(d.order, t.Name)
	}
	d.poke()
}

// poke wakes Run; it never blocks.
func (d *Disk) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Observe records what a compaction reclaimed, for the reclaimable
// estimate. Dry runs, skipped and failed compactions are ignored.
func (d *Disk) Observe(r backends.Report) {
	if r.DryRun || r.Error != "" || r.Skipped != "" || r.ReclaimedBytes == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	dt, ok := d.targets[r.Target]
	if !ok {
		return
	}
	reclaimed := *r.ReclaimedBytes
	var before int64
	if r.BeforeBytes != nil {
		before = *r.BeforeBytes
	}
	dt.after = -1
	if r.AfterBytes != nil {
		dt.after = *r.AfterBytes
	}
	if before > 0 {
		dt.ratio = min(max(float64(reclaimed)/float64(before), 0), 1)
		dt.hasRatio = true
	}
	// "About nothing": at most 0.1% of the size before.
	dt.exhausted = reclaimed <= before/1000
}

// Pressure returns the state of every filesystem that holds a target, by
// mountpoint.
func (d *Disk) Pressure() []FSPressure {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]FSPressure, 0, len(d.fss))
	for _, f := range d.fss {
		if !f.sampled {
			continue
		}
		p := FSPressure{
			Mountpoint:  f.mountpoint,
			Device:      f.dev,
			UsedPercent: f.percent,
			Predicted:   f.predicted,
			Targets:     slices.Clone(f.status),
		}
		for _, name := range f.targets {
			if dt := d.targets[name]; dt != nil && dt.pressured {
				p.UnderPressure = true
			}
		}
		p.NothingReclaimable = p.UnderPressure && f.nothing
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b FSPressure) int { return cmp.Compare(a.Mountpoint, b.Mountpoint) })
	return out
}

// UsedRatios returns the last sampled used fraction (0–1) of each
// filesystem, by mountpoint: the disk_used_ratio{mountpoint} metric.
func (d *Disk) UsedRatios() map[string]float64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]float64, len(d.fss))
	for _, f := range d.fss {
		if f.sampled {
			out[f.mountpoint] = f.percent / 100
		}
	}
	return out
}

// Run samples and emits until ctx is done, then returns nil.
func (d *Disk) Run(ctx context.Context, emit Emit) error {
	clock := time.NewTimer(time.Hour)
	defer clock.Stop()
	for {
		sigs, next := d.tick(time.Now())
		for _, s := range sigs {
			emit(s)
		}
		if next.IsZero() {
			clock.Stop()
		} else {
			clock.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-d.wake:
		case <-clock.C:
		}
	}
}

// diskPlace is where one target lives.
type diskPlace struct {
	name  string
	dev   uint64
	probe string
}

// tick regroups the targets by device, samples every filesystem that is
// due, and returns the signals and the next deadline. Filesystem IO (stat,
// statfs) happens without the lock, so Observe and the status methods never
// wait on a sick disk.
func (d *Disk) tick(now time.Time) ([]policy.Signal, time.Time) {
	d.mu.Lock()
	type want struct {
		name string
		dir  string
	}
	var wants []want
	for _, name := range d.order {
		dt := d.targets[name]
		if !diskEnabled(dt.t) {
			continue
		}
		wants = append(wants, want{name, filepath.Dir(dt.t.Files[0])})
	}
	d.mu.Unlock()

	var places []diskPlace
	for _, w := range wants {
		probe, dev, err := diskLocate(w.dir)
		if err != nil {
			if !d.locateFailed[w.name] {
				d.locateFailed[w.name] = true
				d.logger.Error("cannot find the filesystem of a target", "target", w.name, "dir", w.dir, "err", err)
			}
			continue
		}
		delete(d.locateFailed, w.name)
		places = append(places, diskPlace{w.name, dev, probe})
	}

	d.mu.Lock()
	// Regroup.
	seen := make(map[uint64]bool)
	for _, p := range places {
		dt := d.targets[p.name]
		if dt == nil { // removed meanwhile
			continue
		}
		f := d.fss[p.dev]
		if f == nil {
			f = &diskFS{dev: p.dev, probe: p.probe}
			d.fss[p.dev] = f
		}
		if !seen[p.dev] {
			seen[p.dev] = true
			f.targets = f.targets[:0]
			f.interval = 0
			f.probe = p.probe
		}
		f.targets = append(f.targets, p.name)
		if f.interval == 0 || dt.t.Disk.Interval < f.interval {
			f.interval = dt.t.Disk.Interval
		}
	}
	for dev := range d.fss {
		if !seen[dev] {
			delete(d.fss, dev)
		}
	}
	// Targets no longer on any filesystem leave pressure.
	for _, dt := range d.targets {
		if !diskEnabled(dt.t) {
			dt.pressured = false
		}
	}
	devs := make([]uint64, 0, len(d.fss))
	for dev := range d.fss {
		devs = append(devs, dev)
	}
	slices.Sort(devs)
	var due []*diskMeasure
	for _, dev := range devs {
		f := d.fss[dev]
		if f.last.IsZero() || !now.Before(f.last.Add(f.interval)) {
			f.last = now
			m := &diskMeasure{dev: dev, probe: f.probe, mountpoint: f.mountpoint, files: make(map[string][]string)}
			for _, name := range f.targets {
				m.files[name] = d.targets[name].t.Files
			}
			due = append(due, m)
		}
	}
	d.mu.Unlock()

	// Measure.
	for _, m := range due {
		if m.mountpoint == "" {
			m.mountpoint = diskMountpoint(m.probe, m.dev)
		}
		m.used, m.total, m.err = d.usage(m.probe)
		if m.err == nil && m.total == 0 {
			m.err = errors.New("filesystem reports a total size of 0")
		}
		m.collapse = d.canCollapse(m.probe)
		m.sizes = make(map[string]int64, len(m.files))
		for name, files := range m.files {
			m.sizes[name] = diskTargetSize(files)
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	var sigs []policy.Signal
	for _, m := range due {
		if f := d.fss[m.dev]; f != nil {
			if s, ok := d.evaluate(f, now, m); ok {
				sigs = append(sigs, s)
			}
		}
	}
	var next time.Time
	for _, f := range d.fss {
		if due := f.last.Add(f.interval); next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return sigs, next
}

// diskMeasure is one filesystem's sample, taken without the lock.
type diskMeasure struct {
	dev         uint64
	probe       string
	mountpoint  string
	files       map[string][]string // target → files
	used, total uint64
	err         error
	sizes       map[string]int64 // target → bytes
	collapse    bool             // the filesystem can collapse a range
}

// evaluate applies one sample to a filesystem and its targets. d.mu is held.
func (d *Disk) evaluate(f *diskFS, now time.Time, m *diskMeasure) (policy.Signal, bool) {
	f.mountpoint = m.mountpoint
	err := m.err
	if err != nil {
		if !f.errLogged {
			d.logger.Error("cannot read disk usage", "mountpoint", f.mountpoint, "path", f.probe, "err", err)
			f.errLogged = true
		}
		return policy.Signal{}, false
	}
	if f.errLogged {
		d.logger.Info("disk usage readable again", "mountpoint", f.mountpoint)
		f.errLogged = false
	}
	used, total := m.used, m.total
	pct := float64(used) / float64(total) * 100
	f.percent = pct
	f.sampled = true

	// History: the last d.history samples, none older than d.history
	// intervals (a gap in sampling makes old points meaningless).
	f.samples = append(f.samples, diskSample{now, pct})
	cutoff := now.Add(-time.Duration(d.history) * f.interval)
	i := 0
	for i < len(f.samples)-1 && (len(f.samples)-i > d.history || f.samples[i].at.Before(cutoff)) {
		i++
	}
	f.samples = slices.Delete(f.samples, 0, i)
	slope, trend := diskTrend(f.samples) // percent per second

	wasPressured := false
	var pressured []*diskTarget
	f.predicted = false
	for _, name := range f.targets {
		dt := d.targets[name]
		if dt == nil {
			continue // removed since the regroup
		}
		s := dt.t.Disk
		s.LowPercent = min(s.LowPercent, s.HighPercent) // a low above high would never hold
		if dt.pressured {
			wasPressured = true
		}
		predicted := trend && s.PredictHorizon > 0 && pct < s.HighPercent && slope > 0 &&
			pct+slope*s.PredictHorizon.Seconds() >= s.HighPercent
		if predicted {
			f.predicted = true
		}
		switch {
		case !dt.pressured && (pct >= s.HighPercent || predicted):
			dt.pressured = true
			dt.exhausted, dt.noRoom = false, false
		case dt.pressured && pct < s.LowPercent && !predicted:
			dt.pressured = false
		}
		if dt.pressured {
			pressured = append(pressured, dt)
		}
	}

	if len(pressured) == 0 {
		if wasPressured {
			d.logger.Info("disk pressure relieved", "mountpoint", f.mountpoint, "used_percent", diskRound1(pct))
		}
		f.nothing, f.noRoom = false, false
		f.status = slices.Clone(f.targets)
		return policy.Signal{}, false
	}
	if !wasPressured {
		d.logger.Warn("disk pressure", "mountpoint", f.mountpoint, "used_percent", diskRound1(pct),
			"predicted", f.predicted && pct < pressured[0].t.Disk.HighPercent, "targets", len(pressured))
	}

	// Reclaimable estimates; the order of diskOrder.
	var ests map[string]backends.Estimate
	if d.estimates != nil {
		ests = d.estimates()
	}
	var cands []*diskTarget
	for _, dt := range pressured {
		size := m.sizes[dt.t.Name] // a target added since the measure counts 0
		dt.reclaimable = diskEstimate(size, dt)
		dt.inPlace = m.collapse && dt.t.Method != backends.MethodCopy
		nothing := false
		if e, ok := ests[dt.t.Name]; ok {
			switch {
			case e.Bytes == size:
				// The retention estimate, made of the target as it is
				// now: what a compaction would remove now.
				dt.reclaimable = e.ReclaimableBytes
				nothing = e.ReclaimableBytes <= max(e.Bytes/1000, 0) // about nothing to reclaim
			case e.Bytes < size:
				// Made before the target grew (the retention trigger
				// refreshes every interval): what it found reclaimable
				// still is (records do not get younger, and appends only
				// push more past count and size limits), and what was
				// appended since is unknown. A lower bound, never a
				// reason to skip the target.
				dt.reclaimable = max(dt.reclaimable, e.ReclaimableBytes)
			}
			// An estimate of a larger target is of a file since
			// compacted or replaced: stale.
		}
		dt.survivors = max(size-dt.reclaimable, 0)
		if !nothing && !dt.exhausted && size > 0 {
			cands = append(cands, dt)
		}
	}
	slices.SortStableFunc(pressured, diskOrder)
	slices.SortStableFunc(cands, diskOrder)
	f.status = f.status[:0]
	for _, dt := range pressured {
		f.status = append(f.status, dt.t.Name)
	}

	if len(cands) == 0 {
		if !f.nothing {
			f.nothing = true
			d.logger.Error("disk pressure and nothing left to reclaim: compacting the watched targets cannot free more space; free space or change retention",
				"mountpoint", f.mountpoint, "used_percent", diskRound1(pct), "targets", f.status)
		}
		return policy.Signal{}, false
	}
	f.nothing = false

	// Copies that do not fit the free space wait for others to free room.
	var free int64
	if m.total > m.used {
		free = int64(m.total - m.used)
	}
	var names, waiting []string
	var s0 DiskSettings
	for _, dt := range cands {
		fits := dt.inPlace || backends.CopyFits(dt.survivors, free)
		switch {
		case !fits && !dt.noRoom:
			dt.noRoom = true
			d.logger.Warn("disk pressure: target left out until others free room: a copy of its survivors does not fit the free space",
				"target", dt.t.Name, "mountpoint", f.mountpoint, "survivors_bytes", dt.survivors,
				"margin_bytes", backends.CopyMargin(dt.survivors), "free_bytes", free)
		case fits && dt.noRoom:
			dt.noRoom = false
			d.logger.Info("disk pressure: a copy of the target's survivors fits the free space again",
				"target", dt.t.Name, "mountpoint", f.mountpoint, "survivors_bytes", dt.survivors, "free_bytes", free)
		}
		if !fits {
			waiting = append(waiting, dt.t.Name)
			continue
		}
		if names == nil {
			s0 = dt.t.Disk
		}
		names = append(names, dt.t.Name)
	}
	if len(names) == 0 {
		if !f.noRoom {
			f.noRoom = true
			d.logger.Error("disk pressure and no compaction fits: every target left would copy more than the free space; free space, or use method auto on ext4 or XFS",
				"mountpoint", f.mountpoint, "used_percent", diskRound1(pct), "free_bytes", free, "targets", waiting)
		}
		return policy.Signal{}, false
	}
	f.noRoom = false
	reason := fmt.Sprintf("filesystem %s at %.1f%% used (high %g%%, low %g%%)", f.mountpoint, pct, s0.HighPercent, s0.LowPercent)
	if f.predicted && pct < s0.HighPercent {
		reason = fmt.Sprintf("filesystem %s at %.1f%% used and rising %.2f%%/min: predicted to reach %g%% within %s",
			f.mountpoint, pct, slope*60, s0.HighPercent, s0.PredictHorizon)
	}
	return policy.Signal{Kind: policy.KindDisk, Targets: names, Urgent: true, Reason: reason, At: now}, true
}

// SetEstimates sets the source of reclaimable estimates (the retention
// trigger's): targets under pressure are then ordered by what their
// retention would remove now, and a target with about nothing reclaimable
// (at most 0.1% of its size) is not compacted for pressure. A target that
// grew since its estimate counts at least what the estimate found; targets
// without an estimate keep the estimate from their last compaction.
func (d *Disk) SetEstimates(fn func() map[string]backends.Estimate) {
	d.mu.Lock()
	d.estimates = fn
	d.mu.Unlock()
}

// diskOrder is the order targets under pressure are compacted in: those
// that compact in place first, most reclaimable first; then those that copy,
// fewest survivors first (ties: most reclaimable first).
func diskOrder(a, b *diskTarget) int {
	switch {
	case a.inPlace && !b.inPlace:
		return -1
	case !a.inPlace && b.inPlace:
		return 1
	case !a.inPlace:
		if c := cmp.Compare(a.survivors, b.survivors); c != 0 {
			return c
		}
	}
	return cmp.Compare(b.reclaimable, a.reclaimable)
}

// diskEnabled reports whether the disk trigger watches t: a file target
// with a positive interval and high watermark.
func diskEnabled(t Target) bool {
	return len(t.Files) > 0 && t.Disk.Interval > 0 && t.Disk.HighPercent > 0
}

// diskEstimate is the bytes a compaction of dt would reclaim, for ordering:
// its size with no report yet; otherwise the fraction its last compaction
// reclaimed applied to its size, or what it grew since that compaction left
// it, whichever is more (new records push old ones past count and size
// limits).
func diskEstimate(size int64, dt *diskTarget) int64 {
	if !dt.hasRatio {
		return size
	}
	est := int64(float64(size) * dt.ratio)
	if dt.after >= 0 && size-dt.after > est {
		est = size - dt.after
	}
	return est
}

// diskRound1 rounds to one decimal, for logs.
func diskRound1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }

// diskTrend fits a least-squares line to samples and returns its slope in
// percent per second; ok is false with too few samples.
func diskTrend(samples []diskSample) (slope float64, ok bool) {
	n := len(samples)
	if n < diskMinTrendSamples {
		return 0, false
	}
	t0 := samples[0].at
	var sx, sy float64
	for _, s := range samples {
		sx += s.at.Sub(t0).Seconds()
		sy += s.percent
	}
	mx, my := sx/float64(n), sy/float64(n)
	var num, den float64
	for _, s := range samples {
		dx := s.at.Sub(t0).Seconds() - mx
		num += dx * (s.percent - my)
		den += dx * dx
	}
	if den == 0 {
		return 0, false
	}
	return num / den, true
}

// diskTargetSize is the summed size of files; missing files count 0.
func diskTargetSize(files []string) int64 {
	var n int64
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// diskLocate returns the nearest existing directory at or above dir and its
// device: a target whose directory does not exist yet will be created on
// that filesystem.
func diskLocate(dir string) (probe string, dev uint64, err error) {
	p := filepath.Clean(dir)
	for {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return "", 0, fmt.Errorf("%s is not a directory", p)
			}
			st, ok := fi.Sys().(*syscall.Stat_t)
			if !ok {
				return "", 0, fmt.Errorf("stat %s: no device number on this platform", p)
			}
			return p, uint64(st.Dev), nil //nolint:unconvert // int32 on some platforms
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", 0, err
		}
		parent := filepath.Dir(p)
		if parent == p {
			return "", 0, err
		}
		p = parent
	}
}

// diskMountpoint walks up from dir while the device stays dev and returns
// the topmost directory: the mountpoint.
func diskMountpoint(dir string, dev uint64) string {
	p, err := filepath.Abs(dir)
	if err != nil {
		return dir
	}
	for {
		parent := filepath.Dir(p)
		if parent == p {
			return p
		}
		fi, err := os.Stat(parent)
		if err != nil {
			return p
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || uint64(st.Dev) != dev { //nolint:unconvert
			return p
		}
		p = parent
	}
}
