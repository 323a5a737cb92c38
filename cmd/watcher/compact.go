package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
	"golang.org/x/term"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
	"github.com/papyra/watcher/policy"
)

const compactAbout = `Compacts the targets of the config file (default ./config.toml) once, now,
and prints one summary line per target (one JSON array with --json). On a
terminal a progress line is drawn meanwhile. Exit 0 when every target was
compacted or skipped, 1 when one failed, 2 on bad usage or config.
` + envUsage

func runCompact(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("compact", "watcher compact [--config FILE] [--target NAME]... [--dry-run] [--json] [--now UNIX]", compactAbout, stderr)
	configPath := fs.String("config", "config.toml", "config file")
	var only stringList
	fs.Var(&only, "target", "compact only this target (repeatable)")
	dryRun := fs.Bool("dry-run", false, "report what would be removed, change nothing")
	asJSON := fs.Bool("json", false, "print one JSON array of reports on stdout")
	nowFlag := fs.String("now", "", "evaluate age limits as of this Unix time instead of the clock")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return strayArgument(fs, fs.Arg(0), stderr)
	}
	now := time.Now
	if *nowFlag != "" {
		t, err := parseUnix(*nowFlag)
		if err != nil {
			fmt.Fprintln(stderr, "compact:", err)
			return exitBadConfig
		}
		now = func() time.Time { return t }
	}
	cfg, warnings, err := LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "invalid config: %v\n", err)
		return exitBadConfig
	}
	selected, err := selectTargets(cfg, only)
	if err != nil {
		fmt.Fprintln(stderr, "compact:", err)
		return exitBadConfig
	}

	// On a terminal, the progress line and the log lines share one writer:
	// a log line clears the progress line first and redraws it after.
	var prog *progress
	logOut := stderr
	if f, ok := stdout.(*os.File); ok && !*asJSON && term.IsTerminal(int(f.Fd())) {
		prog = &progress{w: stdout}
		logOut = prog.logWriter(stderr)
	}
	log := newLogger(cfg.Watcher, logOut)
	for _, w := range warningsFor(cfg, warnings, selected) {
		log.Warn(w)
	}
	for _, t := range selected {
		if missing := missingFiles(t); missing != "" {
			log.Warn(fmt.Sprintf("target %q: %s: nothing to compact (check its path)", t.Name, missing))
		}
	}

	opts := executor.Options{StateDir: cfg.Watcher.StateDir, Node: cfg.Watcher.Node,
		Timeout: cfg.Watcher.CompactionTimeout.Duration, LockTimeout: cfg.Watcher.LockTimeout.Duration,
		Now: now, Logger: log}
	if prog != nil {
		opts.Progress = prog.update
	}
	ex := executor.New(opts)
	var targets []executor.Target
	reports := make([]backends.Report, 0, len(selected))
	failed := false
	for _, t := range selected {
		b, err := openBackend(cfg, t)
		if err != nil {
			r := backends.Report{Target: t.Name, Backend: t.Backend, Trigger: policy.KindManual,
				Error: err.Error(), StartedAt: time.Now().UTC(), DryRun: *dryRun}
			reports = append(reports, r)
			failed = true
			if !*asJSON {
				fmt.Fprintln(stdout, summary(r))
			}
			continue
		}
		defer b.Close()
		targets = append(targets, executorTarget(t, b))
	}
	ex.SetTargets(targets)
	for _, t := range targets {
		r := ex.Run(ctx, executor.Job{Target: t.Name, Trigger: policy.KindManual, DryRun: *dryRun})
		prog.clear()
		if r.Error != "" {
			failed = true
		}
		reports = append(reports, r)
		if !*asJSON {
			fmt.Fprintln(stdout, summary(r))
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(reports); err != nil {
			fmt.Fprintln(stderr, "compact:", err)
			return exitFailure
		}
	}
	if failed {
		return exitFailure
	}
	return exitOK
}

// summary is one human-readable line for a report.
func summary(r backends.Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s %-8s ", r.Target, r.Backend)
	switch {
	case r.Error != "":
		fmt.Fprintf(&b, "FAILED: %s", r.Error)
		return b.String()
	case r.Skipped != "":
		fmt.Fprintf(&b, "skipped: %s", r.Skipped)
		return b.String()
	}
	if r.DryRun {
		b.WriteString("(dry run) ")
	}
	fmt.Fprintf(&b, "%s → %s records", humanize.Comma(r.BeforeRecords), humanize.Comma(r.AfterRecords))
	if r.BeforeBytes != nil && r.AfterBytes != nil {
		fmt.Fprintf(&b, ", %s → %s", humanize.IBytes(uint64(max(*r.BeforeBytes, 0))), humanize.IBytes(uint64(max(*r.AfterBytes, 0))))
		if r.ReclaimedBytes != nil {
			verb := "reclaimed"
			if r.DryRun {
				verb = "would reclaim"
			}
			fmt.Fprintf(&b, " (%s %s)", verb, humanize.IBytes(uint64(max(*r.ReclaimedBytes, 0))))
		}
	}
	fmt.Fprintf(&b, " in %s", time.Duration(r.DurationMS)*time.Millisecond)
	if r.Method != "" && r.Method != backends.MethodNone {
		fmt.Fprintf(&b, " (%s)", strings.ReplaceAll(r.Method, "_", " "))
	}
	if d := r.Dropped; d.Invalid+d.NoTimestamp+d.Partial > 0 {
		fmt.Fprintf(&b, "; dropped %d invalid, %d without timestamp, %d partial", d.Invalid, d.NoTimestamp, d.Partial)
	}
	if r.AppendedDuring > 0 {
		fmt.Fprintf(&b, "; kept %d appended meanwhile", r.AppendedDuring)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "; %s", n)
	}
	return b.String()
}

// missingFiles says that a file target has nothing to read: its path, or
// for a rotating target every file of the set, does not exist. "" when a
// file exists, when t is not a file target, or when the directory is
// missing (a config warning says so already).
func missingFiles(t TargetConfig) string {
	var files []string
	switch t.Backend {
	case backends.KindJSON:
		files = []string{t.Path}
	case backends.KindRotating:
		files = []string{t.Path}
		for i := 1; i < t.MaxFiles; i++ {
			files = append(files, fmt.Sprintf("%s.%d", t.Path, i))
		}
	default:
		return ""
	}
	for _, f := range files {
		if _, err := os.Lstat(f); err == nil || !errors.Is(err, os.ErrNotExist) {
			return ""
		}
	}
	if !dirExists(filepath.Dir(t.Path)) {
		return "" // the config's warning says so
	}
	if t.Backend == backends.KindRotating {
		return fmt.Sprintf("%s does not exist, nor any of %s.1 … .%d", t.Path, t.Path, t.MaxFiles-1)
	}
	return t.Path + " does not exist"
}

// progress draws "target: done / total, rate, ETA" on one terminal line.
// Log lines go through logWriter, which clears the line before each log
// line and draws it again after, so that the two never share a line.
type progress struct {
	w      io.Writer
	mu     sync.Mutex
	target string
	start  time.Time
	last   time.Time
	line   string // the line drawn, when drawn
	drawn  bool
}

func (p *progress) update(target string, done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if target != p.target {
		p.target, p.start = target, now
	}
	if now.Sub(p.last) < 100*time.Millisecond && done < total {
		return
	}
	p.last = now
	line := fmt.Sprintf("%s: %s / %s", target, humanize.IBytes(uint64(max(done, 0))), humanize.IBytes(uint64(max(total, 0))))
	if el := now.Sub(p.start).Seconds(); el > 0 && done > 0 {
		rate := float64(done) / el
		line += fmt.Sprintf(", %s/s", humanize.IBytes(uint64(rate)))
		if total > done {
			eta := time.Duration(float64(total-done) / rate * float64(time.Second))
			line += fmt.Sprintf(", ETA %s", eta.Round(time.Second))
		}
	}
	fmt.Fprintf(p.w, "\r\033[K%s", line)
	p.line, p.drawn = line, true
}

// clear erases the progress line before a summary is printed.
func (p *progress) clear() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
	p.target = ""
}

// logWriter returns a writer to out (stderr, usually the same terminal)
// for the logger: each write, one log line, first erases the progress line
// and then draws it again below the log line.
func (p *progress) logWriter(out io.Writer) io.Writer { return progressLogWriter{p, out} }

type progressLogWriter struct {
	p   *progress
	out io.Writer
}

func (w progressLogWriter) Write(b []byte) (int, error) {
	p := w.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
	n, err := w.out.Write(b)
	if p.drawn {
		fmt.Fprintf(p.w, "\r\033[K%s", p.line)
	}
	return n, err
}
