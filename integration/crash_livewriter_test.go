package integration

// The crash campaign with a live writer: while a Papyra-style writer keeps
// appending numbered records, `watcher compact` is SIGKILLed at random
// instants, then run again unkilled to recover. Every record the writer
// wrote that retention keeps must be present exactly once, at every check
// and at the end, and nothing may be left behind. The target has the
// default method in odd rounds, so compactions run in place where the
// filesystem can and rewrite otherwise, and method = "copy" in even rounds
// (an in-place cut takes a few milliseconds of a run, so random kills
// rarely land in it; the rewrite's temporary file and swap take most of
// one): a filler line first in a file is accepted (trimFiller), any other
// line that is not a record fails.
//
// WATCHER_CRASH_ROUNDS (default 50) sets the rounds per backend;
// WATCHER_CRASH_SEED replays a run.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
)

// clwBase is the timestamp of record 0; record n has timestamp clwBase+n,
// so an age limit keeps exactly the records above a sequence number.
const clwBase = 1795600000

// clwLine is record seq as Papyra writes it.
func clwLine(buf []byte, seq int64) []byte {
	return fmt.Appendf(buf[:0], `{"kind": "event", "system_id": "local", "actor_address": "local://worker/%d", "event_type": "Tick", "payload": {"seq": %d, "pad": "crash-campaign-live-writer-padding-0123456789"}, "timestamp": %d.0}`+"\n",
		seq%13, seq, clwBase+seq)
}

// clwWriter appends records 0, 1, 2, … until stopped. For a json target it
// opens the file with O_APPEND, writes one line and closes it, as Papyra's
// JSON backend does; for a rotating target (maxBytes > 0) it first rotates
// as Papyra's rotating backend does: when the line would take the active
// file past maxBytes and the oldest segment slot is free, shift .i to .i+1
// and rename the active file to .1.
type clwWriter struct {
	path     string
	maxBytes int64
	maxFiles int
	written  atomic.Int64 // records whose write and close returned
	rotated  atomic.Int64
	stop     atomic.Bool
	// mu is held for each record (rotation and write); the checks hold it
	// to read the set while no rename is under way.
	mu   sync.Mutex
	done chan error
}

func startCLWWriter(path string, maxBytes int64, maxFiles int) *clwWriter {
	return startCLWWriterPaced(path, maxBytes, maxFiles, 64)
}

// startCLWWriterPaced is startCLWWriter pausing 1 ms after every burst
// records.
func startCLWWriterPaced(path string, maxBytes int64, maxFiles int, burst int64) *clwWriter {
	w := &clwWriter{path: path, maxBytes: maxBytes, maxFiles: maxFiles, done: make(chan error, 1)}
	go func() {
		var buf []byte
		for seq := int64(0); !w.stop.Load(); seq++ {
			buf = clwLine(buf, seq)
			w.mu.Lock()
			err := w.append(buf)
			w.mu.Unlock()
			if err != nil {
				w.done <- err
				return
			}
			w.written.Store(seq + 1)
			if seq%burst == burst-1 {
				time.Sleep(time.Millisecond) // about Papyra's pace, not a busy loop
			}
		}
		w.done <- nil
	}()
	return w
}

// append writes one record: rotate if due, then open, write, close.
func (w *clwWriter) append(line []byte) error {
	if w.maxBytes > 0 {
		if err := w.maybeRotate(int64(len(line))); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (w *clwWriter) seg(i int) string {
	if i == 0 {
		return w.path
	}
	return w.path + "." + strconv.Itoa(i)
}

func (w *clwWriter) maybeRotate(n int64) error {
	fi, err := os.Stat(w.path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	if fi.Size()+n <= w.maxBytes || fi.Size() == 0 {
		return nil
	}
	if _, err := os.Stat(w.seg(w.maxFiles - 1)); err == nil {
		return nil // the set is full: Papyra stops rotating
	}
	for i := w.maxFiles - 2; i >= 1; i-- {
		if err := os.Rename(w.seg(i), w.seg(i+1)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if err := os.Rename(w.path, w.seg(1)); err != nil && !os.IsNotExist(err) {
		return err
	}
	w.rotated.Add(1)
	return nil
}

func (w *clwWriter) finish(t *testing.T) int64 {
	t.Helper()
	w.stop.Store(true)
	select {
	case err := <-w.done:
		if err != nil {
			t.Fatalf("writer: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("writer did not stop")
	}
	return w.written.Load()
}

// files returns the files of the target, oldest segment first.
func (w *clwWriter) files() []string {
	if w.maxBytes == 0 {
		return []string{w.path}
	}
	var out []string
	for i := w.maxFiles + 2; i >= 0; i-- {
		out = append(out, w.seg(i))
	}
	return out
}

// clwCount reads the target, with the writer held between two records so
// that no rotation moves a segment while it is read, and counts each
// sequence number; hi is the number of records written by then. A final
// unterminated line of the active file may be a write in flight and is
// ignored; any other line that is not one of the writer's records fails.
func clwCount(t *testing.T, w *clwWriter) (counts map[int64]int, hi int64) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	hi = w.written.Load()
	counts = map[int64]int{}
	files := w.files()
	for fi, p := range files {
		data, err := os.ReadFile(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		// An in-place compaction may leave a filler line first in each
		// file; line numbers below count from the line after it.
		data = trimFiller(t, p, data)
		lines := bytes.SplitAfter(data, []byte("\n"))
		for i, line := range lines {
			if len(line) == 0 {
				continue
			}
			if line[len(line)-1] != '\n' && i == len(lines)-1 && fi == len(files)-1 {
				continue // in flight
			}
			var rec struct {
				Payload struct {
					Seq *int64 `json:"seq"`
				} `json:"payload"`
			}
			if json.Unmarshal(line, &rec) != nil || rec.Payload.Seq == nil {
				t.Fatalf("%s line %d is not a whole record: %q", p, i+1, clip(line))
			}
			counts[*rec.Payload.Seq]++
		}
	}
	return counts, hi
}

// clwCheck fails unless every record in [lo, hi) is present exactly once
// and no record is present twice.
func clwCheck(t *testing.T, counts map[int64]int, lo, hi int64, when string) {
	t.Helper()
	var missing, dup []int64
	for s := max(lo, 0); s < hi; s++ {
		if counts[s] == 0 {
			missing = append(missing, s)
		}
	}
	for s, n := range counts {
		if n > 1 {
			dup = append(dup, s)
		}
	}
	sort.Slice(dup, func(i, j int) bool { return dup[i] < dup[j] })
	if len(missing) > 0 || len(dup) > 0 {
		t.Fatalf("%s: records [%d, %d): %d missing %v, %d duplicated %v", when, lo, hi, len(missing), head(missing), len(dup), head(dup))
	}
}

// clwReportOf returns the JSON array of reports in out, a run's stdout and
// stderr together: the lines from "[" to "]", without the log lines around
// them.
func clwReportOf(out string) string {
	var b strings.Builder
	in := false
	for line := range strings.Lines(out) {
		switch {
		case !in && line == "[\n":
			in = true
		case in && (line == "]\n" || line == "]"):
			b.WriteString(line)
			return b.String()
		}
		if in {
			b.WriteString(line)
		}
	}
	return out
}

// headCutJournaled reports whether the state directory holds the journal
// of an unfinished in-place compaction of a json target: a *.headcut slot
// that is not all zeros (an empty slot stays allocated between
// compactions).
func headCutJournaled(t *testing.T, state string) bool {
	t.Helper()
	slots, _ := filepath.Glob(filepath.Join(state, "*.headcut"))
	for _, p := range slots {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.Trim(data, "\x00")) > 0 {
			return true
		}
	}
	return false
}

func head(s []int64) []int64 {
	if len(s) > 10 {
		return s[:10]
	}
	return s
}

func TestCrashLiveWriter(t *testing.T) {
	rounds := envInt(t, "WATCHER_CRASH_ROUNDS", 50)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("WATCHER_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("WATCHER_CRASH_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("WATCHER_CRASH_SEED=%d rounds=%d", seed, rounds)
	t.Run("json", func(t *testing.T) {
		clwCampaign(t, 0, 0, rounds, rand.New(rand.NewPCG(seed, 11)))
	})
	t.Run("rotating", func(t *testing.T) {
		clwCampaign(t, 256<<10, 12, rounds, rand.New(rand.NewPCG(seed, 12)))
	})
}

// clwWindow is the age limit in records (seconds): a compaction at "now"
// = clwBase+n keeps the records n-clwWindow and newer. A rotating set of
// 12 × 256 KiB holds about 15,000 records, so the window fits with room for
// what the writer appends before the snapshot; but a round's recovery runs
// with the round's "now" after the kill delay, and on a slow or loaded
// machine the writer can append more than that room meanwhile: the
// compaction then drops the oldest chunks beyond max_files, as Papyra's own
// compaction does, and reports them (dropped.count and a note). The check
// allows exactly those reported records, oldest first (clwDropped), and
// nothing else.
const clwWindow = 8000

// clwDropped tracks the records that compactions reported dropping because
// the survivors of a rotating set filled more than max_files chunks: a
// compaction at now keeps the records from now-clwWindow on, and its
// dropped.count are the oldest of those it found, so everything below the
// returned watermark may be missing, nothing above it.
func clwDropped(below, now int64, rep report) int64 {
	if rep.Dropped.Count == 0 {
		return below
	}
	return max(below, now-clwWindow) + rep.Dropped.Count
}

func clwCampaign(t *testing.T, maxBytes int64, maxFiles int, rounds int, rng *rand.Rand) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	state := filepath.Join(dir, "state")
	path := filepath.Join(data, "events.ndjson")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	backend := "json"
	extra := ""
	if maxBytes > 0 {
		backend = "rotating"
		extra = fmt.Sprintf("max_bytes = %d\nmax_files = %d\n", maxBytes, maxFiles)
	}
	body := fmt.Sprintf(`[watcher]
state_dir = %q
http_listen = ""

[policy]
partial_line_grace = "876000h"

[triggers.timer]
interval = "0s"

[[target]]
name = "events"
backend = %q
path = %q
%s
[target.retention]
max_age_seconds = %d
`, state, backend, path, extra, clwWindow)
	cfg := writeConfig(t, dir, body)
	cfgCopy := filepath.Join(dir, "copy.toml")
	writeFile(t, cfgCopy, []byte(strings.Replace(body, "[target.retention]", "method = \"copy\"\n\n[target.retention]", 1)))
	w := startCLWWriter(path, maxBytes, maxFiles)
	defer func() {
		if !w.stop.Load() {
			w.finish(t)
		}
	}()
	// Let the target reach its retained size before the first round.
	eventually(t, 60*time.Second, "the writer fills the window", func() (bool, string) {
		return w.written.Load() >= 2*clwWindow, fmt.Sprint(w.written.Load())
	})

	args := func(cfg string, now int64) []string {
		return []string{"compact", "--config", cfg, "--json", "--now", strconv.FormatInt(clwBase+now, 10)}
	}
	// compactUntilOK runs unkilled compactions until one succeeds: a
	// rotating compaction that meets a rotation stops and says so (nothing
	// changed); it is retried, as the daemon would.
	var retriedRotation int
	// droppedBelow: records below it were reported dropped as beyond
	// max_files (clwDropped); roundsDropping counts the rounds with such a
	// drop.
	var droppedBelow int64
	var roundsDropping int
	// methods counts the methods that the reports of successful
	// compactions name.
	methods := map[string]int{}
	compactUntilOK := func(cfg string, now int64, what string) report {
		t.Helper()
		for attempt := 0; ; attempt++ {
			r := runWatcher(t, 2*time.Minute, args(cfg, now)...)
			if r.Code == 0 {
				reps := parseReports(t, r.Stdout)
				if len(reps) != 1 {
					t.Fatalf("%s: %s", what, r)
				}
				methods[reps[0].Method]++
				return reps[0]
			}
			if attempt < 20 && strings.Contains(r.Stdout, "rotation") {
				retriedRotation++
				continue
			}
			t.Fatalf("%s: %s", what, r)
		}
	}
	// The typical run time, for drawing kill instants.
	var runs []time.Duration
	for range 3 {
		start := time.Now()
		now := w.written.Load()
		droppedBelow = clwDropped(droppedBelow, now, compactUntilOK(cfgCopy, now, "uncrashed compact"))
		runs = append(runs, time.Since(start))
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i] < runs[j] })
	typical := runs[1]
	t.Logf("%s: an uncrashed run with the writer going takes %s", backend, typical)

	var killed, completed, inFlight, killedMidSwap, killedMidCut int
	lastNow := int64(0)
	for round := range rounds {
		now := w.written.Load()
		lastNow = now
		delay := time.Duration(rng.Int64N(int64(typical)*12/10 + 1))
		roundCfg := cfg
		if round%2 == 0 {
			roundCfg = cfgCopy
		}
		cmd := exec.Command(watcherBin, args(roundCfg, now)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay) // when to kill: drawn at random, not a wait for success
		tempAtKill := len(leftovers(t, data)) > 0
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			killed++
			midSwap := len(leftovers(t, state)) > 0
			midCut := headCutJournaled(t, state)
			if tempAtKill || midSwap || midCut {
				inFlight++
			}
			if midSwap {
				killedMidSwap++
			}
			if midCut {
				killedMidCut++
			}
		} else {
			completed++
			if ws.ExitStatus() != 0 && !strings.Contains(out.String(), "rotation") {
				t.Fatalf("round %d: compact failed on its own (exit %d):\n%s", round, ws.ExitStatus(), out.String())
			}
			if ws.ExitStatus() == 0 {
				for _, rep := range parseReports(t, clwReportOf(out.String())) {
					methods[rep.Method]++
					droppedBelow = clwDropped(droppedBelow, now, rep)
				}
			}
		}
		before := droppedBelow
		// Recover with an unkilled run, then check while the writer goes on.
		droppedBelow = clwDropped(droppedBelow, now, compactUntilOK(roundCfg, now, fmt.Sprintf("round %d: compact after a kill at %s", round, delay)))
		if droppedBelow != before {
			roundsDropping++
		}
		counts, hi := clwCount(t, w)
		clwCheck(t, counts, max(now-clwWindow, droppedBelow), hi, fmt.Sprintf("round %d (kill at %s of a typical %s; records below %d reported dropped beyond max_files)", round, delay, typical, droppedBelow))
	}
	if lastNow == 0 {
		t.Fatal("no round ran")
	}

	written := w.finish(t)
	rep := compactUntilOK(cfg, written, "final compact")
	droppedBelow = clwDropped(droppedBelow, written, rep)
	counts, _ := clwCount(t, w)
	clwCheck(t, counts, max(written-clwWindow, droppedBelow), written, "final")
	for s := range counts {
		if s < written-clwWindow {
			t.Fatalf("final: record %d is older than the age limit and still present", s)
		}
	}
	if rep.Error != "" {
		t.Errorf("final report: %+v", rep)
	}
	wantNoLeftovers(t, data)
	// A kill while the journal was written left its temporary file in
	// state/ until e424f8d (found by this campaign).
	wantNoLeftovers(t, state)
	t.Logf("%s: %d rounds, %d records written (%d rotations by the writer), %d kept exactly once; killed %d (with watcher files or a journal in flight %d, with a swap or rotating set journal %d, with a json in-place journal %d), completed before the kill %d; compactions in place %d, by copy %d; compactions retried after a concurrent rotation %d; rounds whose recovery reported records dropped beyond max_files %d",
		backend, rounds, written, w.rotated.Load(), len(counts), killed, inFlight, killedMidSwap, killedMidCut, completed, methods[backends.MethodInPlace], methods[backends.MethodCopy], retriedRotation, roundsDropping)
	if inFlight == 0 {
		t.Errorf("%s: no kill landed while a watcher file or journal was in flight: the campaign does not exercise what it should", backend)
	}
	// With the default method the json campaign compacts in place where
	// the filesystem can (its kills then land in the head cut, checked
	// the same way); a rotating set is compacted in place only when its
	// files are as the writer makes them, which the writer's rotations
	// during the compaction often spoil, so it is not required there.
	if maxBytes == 0 && fsx.CanCollapse(data) && methods[backends.MethodInPlace] == 0 {
		t.Errorf("%s: no compaction ran in place on %s, which can collapse a range: the campaign does not exercise in-place compaction", backend, data)
	}
}
