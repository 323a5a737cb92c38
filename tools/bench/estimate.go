package main

// The retention trigger's cost in the real daemon: many large json targets,
// each estimated every [triggers.retention] interval.

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var (
	estTargets = flag.Int("estimate-targets", 100, "estimate section: json targets")
	estRecords = flag.Int("estimate-records", 1_000_000, "estimate section: records per target (1,000,000 is ~194 MB)")
	estRepeat  = flag.Int("estimate-repeat", 3, "estimate section: daemon runs (medians are reported)")
)

// benchEstimate runs a daemon with *estTargets json targets of
// *estRecords records each, the retention trigger on at its default
// interval (10 s) with limits that remove nothing, and reports: the time
// until every target has its first estimate (each file read whole once),
// then the daemon's CPU over *idle with nothing written, and over *idle with
// 4 KiB appended to every target every 10 s (one refresh of each target
// reads its append): medians of *estRepeat daemon runs on the same files.
func benchEstimate(bin, gen string) {
	d := filepath.Join(*dir, "estimate")
	os.RemoveAll(d)
	must(os.MkdirAll(d, 0o755))
	defer os.RemoveAll(d) // tens of GB
	wall := time.Now().Unix()
	src := filepath.Join(d, "src.ndjson")
	run(gen, "-records", strconv.Itoa(*estRecords), "-out", src, "-now", strconv.FormatInt(wall, 10))
	fi, err := os.Stat(src)
	must(err)
	addr := freeAddr()
	var b strings.Builder
	fmt.Fprintf(&b, "[watcher]\nstate_dir = %q\nhttp_listen = %q\n", filepath.Join(d, "state"), addr)
	// Nothing is reclaimable: no compaction runs during the measurement.
	fmt.Fprintf(&b, "[triggers.retention]\ninterval = \"10s\"\n")
	var paths []string
	for i := range *estTargets {
		p := filepath.Join(d, fmt.Sprintf("t%03d.ndjson", i))
		must(copyFile(src, p))
		paths = append(paths, p)
		fmt.Fprintf(&b, "[[target]]\nname = \"t%03d\"\nbackend = \"json\"\npath = %q\n[target.retention]\nmax_age_seconds = 2592000\nmax_records = %d\n",
			i, p, *estRecords*10)
	}
	must(os.Remove(src))
	cfg := writeConfig("estimate", b.String())
	var firsts, firstCPU, idlePct, idleMS, appPct, appMS []float64
	var rss int64
	for range *estRepeat {
		f, fc, ip, im, ap, am, r := estimateRun(bin, cfg, addr, paths, wall)
		firsts, firstCPU = append(firsts, f), append(firstCPU, fc)
		idlePct, idleMS, appPct, appMS = append(idlePct, ip), append(idleMS, im), append(appPct, ap), append(appMS, am)
		rss = max(rss, r)
	}
	fmt.Printf("| first estimate of %d targets of %s (each file read whole once) | %.1f s wall, %.1f s CPU |\n",
		*estTargets, mb(fi.Size()), median(firsts), median(firstCPU))
	fmt.Printf("| idle, %d targets, nothing written, %s | %.2f %% of one core | %.2f ms CPU per target refresh |\n",
		*estTargets, *idle, median(idlePct), median(idleMS))
	fmt.Printf("| %d targets, 4 KiB appended to each every 10 s, %s | %.2f %% of one core | %.2f ms CPU per target refresh |\n",
		*estTargets, *idle, median(appPct), median(appMS))
	fmt.Printf("(medians of %d daemon runs; highest RSS %d MB)\n", *estRepeat, rss>>10)
}

// estimateRun starts the daemon once and returns the wall and CPU seconds
// until every target has an estimate, the CPU share (percent of one core)
// and the CPU per target refresh (ms) idle and with appends, and its RSS
// (KiB).
func estimateRun(bin, cfg, addr string, paths []string, wall int64) (first, firstCPU, idlePct, idleMS, appPct, appMS float64, rss int64) {
	cmd := daemon(bin, cfg)
	cmd.Stderr = io.Discard
	t0 := time.Now()
	must(cmd.Start())
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	waitHTTP(addr)
	for estimated(addr) < *estTargets {
		if time.Since(t0) > 30*time.Minute {
			fmt.Fprintln(os.Stderr, "bench: estimates not all made within 30 min")
			os.Exit(1)
		}
		time.Sleep(200 * time.Millisecond)
	}
	const hz = 100 // USER_HZ
	first, firstCPU = time.Since(t0).Seconds(), float64(cpuTicks(cmd.Process.Pid))/hz
	time.Sleep(15 * time.Second) // past the first interval

	refreshes := float64(*estTargets) * idle.Seconds() / 10
	window := func() (pct, ms float64) {
		c0 := cpuTicks(cmd.Process.Pid)
		time.Sleep(*idle)
		cpu := float64(cpuTicks(cmd.Process.Pid)-c0) / hz
		return cpu / idle.Seconds() * 100, cpu / refreshes * 1000
	}
	idlePct, idleMS = window()

	// Writers: 4 KiB per target every 10 s, spread over the interval.
	chunk := make([]byte, 0, 4200)
	for i := 0; len(chunk) < 4096; i++ {
		chunk = fmt.Appendf(chunk, `{"kind": "event", "system_id": "local", "actor_address": "local://bench/%d", "event_type": "Tick", "payload": {"seq": %d}, "timestamp": %d.0}`+"\n", i, i, wall)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Second / time.Duration(len(paths)))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				appendLine(paths[i%len(paths)], string(chunk))
			}
		}
	}()
	time.Sleep(10 * time.Second)
	appPct, appMS = window()
	close(stop)
	<-done
	return first, firstCPU, idlePct, idleMS, appPct, appMS, rssKB(cmd.Process.Pid)
}

// median of xs (not empty).
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// estimated is how many targets /metrics shows a reclaimable estimate for.
func estimated(addr string) int {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "papyra_compactor_reclaimable_bytes{") {
			n++
		}
	}
	return n
}
