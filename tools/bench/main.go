// Command bench measures the watcher the way BENCHMARKS.md reports it: json
// compaction against `cp` of the same file in the same run (wall time and
// peak RSS), in-place compaction (the first one and the steady state), a
// rotating set, the daemon's reaction latency and its idle cost. It
// generates its own data with tools/genpapyra.
//
//	go run ./tools/bench                 # everything (needs ~10 GB free in -dir)
//	go run ./tools/bench -quick          # no 2 GB file, 20 trials, 10 s idle
//	go run ./tools/bench -only inplace   # one section: files, inplace, rotating, reaction, idle
//	go run ./tools/bench -only estimate  # not in "everything": 100 targets of 194 MB (~20 GB in -dir)
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var (
	dir    = flag.String("dir", filepath.Join(os.TempDir(), "watcher-bench"), "scratch directory")
	quick  = flag.Bool("quick", false, "smaller run: no 2 GB file, 20 reaction trials, 10 s idle")
	trials = flag.Int("trials", 100, "reaction latency trials")
	idle   = flag.Duration("idle", 60*time.Second, "idle measurement duration")
	repeat = flag.Int("repeat", 3, "runs per json size (the best is reported, as for cp)")
	only   = flag.String("only", "", "comma-separated sections to run (files, inplace, rotating, reaction, idle, estimate); all but estimate when empty")
)

// section reports whether the section name is to run.
func section(name string) bool {
	return *only == "" || slices.Contains(strings.Split(*only, ","), name)
}

// now is the fixed clock of the generated data, so retention is repeatable.
const now = 1795600000

func main() {
	flag.Parse()
	if *steadyChild != "" {
		steadyMain(*steadyChild)
		return
	}
	if *quick {
		*trials, *idle = 20, 10*time.Second
	}
	must(os.MkdirAll(*dir, 0o755))
	bin := filepath.Join(*dir, "watcher")
	gen := filepath.Join(*dir, "genpapyra")
	run("go", "build", "-o", bin, "./cmd/watcher")
	run("go", "build", "-o", gen, "./tools/genpapyra")

	fmt.Printf("machine: %d cores, %s, %s, load average %s\n\n", runtime.NumCPU(), cpuModel(), runtime.Version(), loadAvg())
	if section("files") || section("rotating") {
		fmt.Println("| what | watcher | cp | ratio to cp | cp + fsync | ratio to cp + fsync | peak RSS |")
		fmt.Println("| --- | --- | --- | --- | --- | --- | --- |")
	}
	if section("files") {
		sizes := []int{51_000, 1_000_000, 10_200_000}
		if *quick {
			sizes = sizes[:2]
		}
		for _, n := range sizes {
			benchJSON(bin, gen, n)
		}
	}
	if section("rotating") {
		benchRotating(bin, gen, 1_000_000)
	}
	if section("inplace") {
		fmt.Println()
		sizes := []int{1_000_000, 10_200_000}
		if *quick {
			sizes = sizes[:1]
		}
		benchInPlace(bin, gen, sizes)
	}
	fmt.Println()
	if section("reaction") {
		benchReaction(bin)
	}
	if section("idle") {
		benchIdle(bin)
	}
	if slices.Contains(strings.Split(*only, ","), "estimate") {
		benchEstimate(bin, gen)
	}
	fmt.Printf("\nload average at the end: %s\n", loadAvg())
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// benchJSON compacts a generated file of n records to n/10.
func benchJSON(bin, gen string, n int) {
	src := filepath.Join(*dir, fmt.Sprintf("src-%d.ndjson", n))
	if _, err := os.Stat(src); err != nil {
		run(gen, "-records", strconv.Itoa(n), "-out", src, "-now", strconv.Itoa(now))
	}
	fi, err := os.Stat(src)
	must(err)
	work := filepath.Join(*dir, "work", "events.ndjson")
	must(os.MkdirAll(filepath.Dir(work), 0o755))
	cfg := writeConfig("json", fmt.Sprintf(`[[target]]
name = "events"
backend = "json"
path = %q
method = "copy"
[target.retention]
max_records = %d
`, work, n/10))
	var best, bestCp, bestCpSync time.Duration
	var rss int64
	for range *repeat {
		must(copyFile(src, work))
		warm(work)
		cpOut := work + ".cp"
		t0 := time.Now()
		run("cp", work, cpOut)
		cpT := time.Since(t0)
		os.Remove(cpOut)
		cpSyncT := cpSync(work, cpOut)
		os.Remove(cpOut)
		if bestCpSync == 0 || cpSyncT < bestCpSync {
			bestCpSync = cpSyncT
		}
		t, r := timed(bin, "compact", "--config", cfg, "--now", strconv.Itoa(now))
		if best == 0 || t < best {
			best = t
		}
		if bestCp == 0 || cpT < bestCp {
			bestCp = cpT
		}
		rss = max(rss, r)
	}
	os.Remove(work)
	fmt.Printf("| json %s, %s → %s records | %s | %s | %.2f× | %s | %.2f× | %d MB |\n", mb(fi.Size()), comma(n), comma(n/10),
		best.Round(time.Millisecond), bestCp.Round(time.Millisecond), best.Seconds()/bestCp.Seconds(),
		bestCpSync.Round(time.Millisecond), best.Seconds()/bestCpSync.Seconds(), rss>>20)
}

// benchRotating compacts a ~200 MB rotating set (4 segments + active) to a
// tenth of its records.
func benchRotating(bin, gen string, n int) {
	src := filepath.Join(*dir, fmt.Sprintf("src-%d.ndjson", n))
	if _, err := os.Stat(src); err != nil {
		run(gen, "-records", strconv.Itoa(n), "-out", src, "-now", strconv.Itoa(now))
	}
	fi, err := os.Stat(src)
	must(err)
	setDir := filepath.Join(*dir, "rot")
	os.RemoveAll(setDir)
	must(os.MkdirAll(setDir, 0o755))
	maxBytes := fi.Size()/5 + 1<<20
	splitRotating(src, filepath.Join(setDir, "audit.log"), maxBytes, 5)
	cfg := writeConfig("rot", fmt.Sprintf(`[[target]]
name = "audit"
backend = "rotating"
path = %q
max_bytes = %d
max_files = 5
method = "copy"
[target.retention]
max_records = %d
`, filepath.Join(setDir, "audit.log"), maxBytes, n/10))
	t0 := time.Now()
	run("cp", "-r", setDir, setDir+".cp")
	cpT := time.Since(t0)
	os.RemoveAll(setDir + ".cp")
	t0 = time.Now()
	run("cp", "-r", setDir, setDir+".cp")
	run("sync", "-f", setDir+".cp")
	cpSyncT := time.Since(t0)
	os.RemoveAll(setDir + ".cp")
	t, rss := timed(bin, "compact", "--config", cfg, "--now", strconv.Itoa(now))
	fmt.Printf("| rotating set %s (5 files), %s → %s records | %s | %s | %.2f× | %s | %.2f× | %d MB |\n", mb(fi.Size()), comma(n), comma(n/10),
		t.Round(time.Millisecond), cpT.Round(time.Millisecond), t.Seconds()/cpT.Seconds(),
		cpSyncT.Round(time.Millisecond), t.Seconds()/cpSyncT.Seconds(), rss>>20)
	os.RemoveAll(setDir)
}

// splitRotating lays the lines of src out as Papyra's rotating writer
// would: the newest lines in path, older ones in path.1 … path.<files-1>.
func splitRotating(src, path string, maxBytes int64, files int) {
	in, err := os.Open(src)
	must(err)
	defer in.Close()
	var chunks [][]byte
	var cur []byte
	r := bufio.NewReaderSize(in, 1<<20)
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			if len(cur) > 0 && int64(len(cur)+len(line)) > maxBytes {
				chunks = append(chunks, cur)
				cur = nil
			}
			cur = append(cur, line...)
		}
		if err != nil {
			break
		}
	}
	chunks = append(chunks, cur)
	slices.Reverse(chunks)
	for i, c := range chunks[:min(len(chunks), files)] {
		name := path
		if i > 0 {
			name = fmt.Sprintf("%s.%d", path, i)
		}
		must(os.WriteFile(name, c, 0o644))
	}
}

// benchReaction measures append → compaction start over many trials.
func benchReaction(bin string) {
	const debounce = 200 * time.Millisecond
	d := filepath.Join(*dir, "react")
	os.RemoveAll(d)
	must(os.MkdirAll(d, 0o755))
	file := filepath.Join(d, "events.ndjson")
	must(os.WriteFile(file, nil, 0o644))
	addr := freeAddr()
	cfg := writeConfig("react", fmt.Sprintf(`[watcher]
state_dir = %q
http_listen = %q
log_format = "json"
[policy]
debounce = "%s"
max_wait = "10s"
cooldown = "0s"
rate = 1000000
burst = 1000
[triggers.timer]
interval = "0s"
[triggers.growth]
min_bytes = 1
min_ratio = 0.0
[[target]]
name = "events"
backend = "json"
path = %q
[target.retention]
max_records = 1000000
`, filepath.Join(d, "state"), addr, debounce, file))
	cmd := daemon(bin, cfg)
	stderr, err := cmd.StderrPipe()
	must(err)
	must(cmd.Start())
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	starts := make(chan time.Time, 16)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line struct {
				Msg       string    `json:"msg"`
				StartedAt time.Time `json:"started_at"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "compaction" {
				starts <- line.StartedAt
			}
		}
	}()
	waitHTTP(addr)
	time.Sleep(500 * time.Millisecond) // let the growth trigger take its baseline
	var lat []time.Duration
	for i := range *trials {
		rec := fmt.Sprintf(`{"kind": "event", "system_id": "local", "actor_address": "local://bench/0", "event_type": "Tick", "payload": {"seq": %d}, "timestamp": %d.0}`+"\n", i, now)
		t0 := time.Now()
		appendLine(file, rec)
		select {
		case s := <-starts:
			lat = append(lat, s.Sub(t0))
		case <-time.After(10 * time.Second):
			fmt.Fprintf(os.Stderr, "bench: trial %d: no compaction within 10s\n", i)
		}
		time.Sleep(50 * time.Millisecond)
	}
	slices.Sort(lat)
	if len(lat) == 0 {
		fmt.Println("reaction: no compaction observed")
		return
	}
	p := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	fmt.Printf("| reaction, append → compaction start (%d trials, debounce %s) | p50 %s | p99 %s | goal p99 ≤ %s |\n",
		len(lat), debounce, p(0.50).Round(time.Millisecond), p(0.99).Round(time.Millisecond), debounce+100*time.Millisecond)
}

// benchIdle measures CPU and RSS of a daemon with 100 quiet targets.
func benchIdle(bin string) {
	d := filepath.Join(*dir, "idle")
	os.RemoveAll(d)
	must(os.MkdirAll(d, 0o755))
	var b strings.Builder
	fmt.Fprintf(&b, "[watcher]\nstate_dir = %q\nhttp_listen = %q\n", filepath.Join(d, "state"), freeAddr())
	for i := range 100 {
		p := filepath.Join(d, fmt.Sprintf("t%03d.ndjson", i))
		must(os.WriteFile(p, []byte(`{"kind": "event", "timestamp": 1795600000.0}`+"\n"), 0o644))
		fmt.Fprintf(&b, "[[target]]\nname = \"t%03d\"\nbackend = \"json\"\npath = %q\n[target.retention]\nmax_records = 1000\n", i, p)
	}
	cfg := writeConfig("idle", b.String())
	cmd := daemon(bin, cfg)
	cmd.Stderr = io.Discard
	must(cmd.Start())
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	time.Sleep(3 * time.Second)
	c0 := cpuTicks(cmd.Process.Pid)
	time.Sleep(*idle)
	c1 := cpuTicks(cmd.Process.Pid)
	const hz = 100 // USER_HZ
	pct := float64(c1-c0) / hz / idle.Seconds() * 100
	fmt.Printf("| idle, 100 targets, %s | %.3f %% of one core | RSS %d MB | goal < 0.1 %%, < 40 MB |\n", *idle, pct, rssKB(cmd.Process.Pid)>>10)
}

// daemon is `watcher run` as a child that dies with this process, however
// it ends.
func daemon(bin, cfg string) *exec.Cmd {
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	return cmd
}

func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	must(err)
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(err)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			v, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return v
		}
	}
	return 0
}

// timed runs the watcher under /usr/bin/time and returns its wall time and
// peak RSS in bytes. (The rusage of a direct child would include this
// process's own RSS: Go starts children with vfork, and exec records the
// shared memory's high-water mark as the child's.)
func timed(name string, args ...string) (time.Duration, int64) {
	t, rss, _ := timedOut(name, args...)
	return t, rss
}

func writeConfig(name, body string) string {
	p := filepath.Join(*dir, name+".toml")
	if !strings.Contains(body, "[watcher]") {
		body = fmt.Sprintf("[watcher]\nstate_dir = %q\nhttp_listen = \"\"\n", filepath.Join(*dir, "state-"+name)) + body
	}
	must(os.WriteFile(p, []byte(body), 0o644))
	return p
}

func appendLine(path, line string) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	must(err)
	_, err = f.WriteString(line)
	must(err)
	must(f.Close())
}

// cpSync times `cp` followed by an fsync of the copy: the durability the
// watcher pays for and plain cp does not.
func cpSync(src, dst string) time.Duration {
	t0 := time.Now()
	run("cp", src, dst)
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	must(err)
	must(f.Sync())
	must(f.Close())
	return time.Since(t0)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// warm reads a file once so cp and the watcher both find it in the page
// cache.
func warm(path string) {
	f, err := os.Open(path)
	must(err)
	io.Copy(io.Discard, f)
	f.Close()
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	defer l.Close()
	return l.Addr().String()
}

func waitHTTP(addr string) {
	for range 100 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintln(os.Stderr, "bench: daemon did not start")
	os.Exit(1)
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			return strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
		}
	}
	return "unknown cpu"
}

func mb(n int64) string { return fmt.Sprintf("%d MB", n/1_000_000) }

func comma(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func run(name string, args ...string) {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %s %v: %v\n", name, args, err)
		os.Exit(1)
	}
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
