package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
	"golang.org/x/term"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
	"github.com/papyra/watcher/policy"
)

func runCompact(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("compact", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "config.toml", "config file")
	var only stringList
	fs.Var(&only, "target", "compact only this target (repeatable)")
	dryRun := fs.Bool("dry-run", false, "report what would be removed, change nothing")
	asJSON := fs.Bool("json", false, "print one JSON array of reports on stdout")
	nowFlag := fs.String("now", "", "evaluate age limits as of this Unix time instead of the clock")
	if err := fs.Parse(args); err != nil {
		return exitBadConfig
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "compact: unexpected argument %q\n", fs.Arg(0))
		return exitBadConfig
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
	log := newLogger(cfg.Watcher)
	for _, w := range warnings {
		log.Warn(w)
	}
	selected, err := selectTargets(cfg, only)
	if err != nil {
		fmt.Fprintln(stderr, "compact:", err)
		return exitBadConfig
	}

	var prog *progress
	if f, ok := stdout.(*os.File); ok && !*asJSON && term.IsTerminal(int(f.Fd())) {
		prog = &progress{w: stdout}
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

// progress draws "target: done / total, rate, ETA" on one terminal line.
type progress struct {
	w      io.Writer
	mu     sync.Mutex
	target string
	start  time.Time
	last   time.Time
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
	p.drawn = true
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
