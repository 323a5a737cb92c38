package integration

// The aimed kill campaign of the json swap. A Papyra-style writer appends
// numbered records of about 1 KB as fast as it can (open O_APPEND, one
// write, close) while `watcher compact` (max_records) runs on a file of
// 30,000 to 60,000 of them; a goroutine polls the target's inode and
// SIGKILLs the compaction a random 0–3 ms after it changes, that is just
// after the rename, while the old inode is drained into the new file under
// the write lease (in one aimed round of four 3–20 ms after it, to reach
// later drain chunks; in one round of five at a random instant of the run
// instead). The writer goes on for a moment (its opens, which waited on the
// lease, now append straight to the new file, as Papyra's would), then
// stops. Then:
//
//   - a plain recovery: `watcher run` recovers interrupted compactions
//     before anything else, so the daemon is started (no trigger can fire)
//     and stopped once it runs; or, in other rounds, an unkilled `watcher
//     compact` whose retention keeps every record (it recovers first). The
//     file must then be exactly the writer's records [lo, W) in order, each
//     once and whole, where W is what the writer wrote and lo is 0 (the
//     swap did not happen) or the killed compaction's cut;
//   - an unkilled `watcher compact` with max_records: the file must be
//     exactly the newest max_records records, in order.
//
// Nothing may be left behind (old links, temp files, journal). A
// calibration round without a kill, checked the same way, comes first. The
// summary counts the kills that landed after the rename ("aimed"; most must)
// and the defects found: torn lines (anything but exactly one of the
// writer's records, NUL bytes included), duplicated records, records out of
// order, records lost.
//
// WATCHER_SWAP_CRASH_ROUNDS (default 40) sets the rounds; WATCHER_CRASH_SEED
// replays the random draws of a run (each round draws from its own stream,
// seeded by the seed and the round number; timing is not replayed).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/papyra/watcher/internal/testlog"
)

const (
	// swapKeep is the retention's max_records.
	swapKeep = 20000
	// The file holds swapMinLines to swapMaxLines records when the killed
	// compaction starts.
	swapMinLines, swapMaxLines = 30000, 60000
	// An aimed kill comes up to swapMaxKillDelay after the rename; in one
	// aimed round out of four, from swapMaxKillDelay to swapMaxLateDelay
	// instead: the drain classifies the lines of a chunk before it
	// journals the chunk's slot, which takes about as long as the first
	// window (1 MiB of 1 KB lines), so later chunks need the second.
	swapMaxKillDelay = 3 * time.Millisecond
	swapMaxLateDelay = 20 * time.Millisecond
)

// swapPad brings a record to about 1 KB.
var swapPad = strings.Repeat("swap-campaign-pad-", 46)

// swapSeqKey precedes the sequence number in a record.
const swapSeqKey = `"payload": {"seq": `

// swapLine is record seq as the campaign's writer writes it: a Papyra event
// of about 1 KB whose timestamp is clwBase+seq. It is swapHead, swapPad
// and swapTail.
func swapLine(buf []byte, seq int64) []byte {
	buf = swapHead(buf[:0], seq)
	buf = append(buf, swapPad...)
	return swapTail(buf, seq)
}

func swapHead(buf []byte, seq int64) []byte {
	buf = append(buf, `{"kind": "event", "system_id": "local", "actor_address": "local://worker/`...)
	buf = strconv.AppendInt(buf, seq%13, 10)
	buf = append(buf, `", "event_type": "Tick", `+swapSeqKey...)
	buf = strconv.AppendInt(buf, seq, 10)
	return append(buf, `, "pad": "`...)
}

func swapTail(buf []byte, seq int64) []byte {
	buf = append(buf, `"}, "timestamp": `...)
	buf = strconv.AppendInt(buf, clwBase+seq, 10)
	return append(buf, ".0}\n"...)
}

// swapSeq returns the sequence number of line when line is exactly one of
// the writer's records (newline included). It compares the line piecewise
// rather than building it: the test may run under the race detector.
func swapSeq(line []byte, scratch *[]byte) (int64, bool) {
	i := bytes.Index(line, []byte(swapSeqKey))
	if i < 0 {
		return 0, false
	}
	rest := line[i+len(swapSeqKey):]
	j := bytes.IndexByte(rest, ',')
	if j < 0 || j > 19 {
		return 0, false
	}
	seq, err := strconv.ParseInt(string(rest[:j]), 10, 64)
	if err != nil || seq < 0 {
		return 0, false
	}
	head := swapHead((*scratch)[:0], seq)
	*scratch = head
	if !bytes.HasPrefix(line, head) {
		return seq, false
	}
	line = line[len(head):]
	if !bytes.HasPrefix(line, []byte(swapPad)) {
		return seq, false
	}
	tail := swapTail(head[len(head):], seq)
	return seq, bytes.Equal(line[len(swapPad):], tail)
}

// swapWriter appends records first, first+1, … until stopped, one
// open-write-close each (clwWriter's append), without pause.
type swapWriter struct {
	written atomic.Int64 // records [0, written) were written and closed
	stop    atomic.Bool
	done    chan error
}

func startSwapWriter(path string, first int64) *swapWriter {
	w := &swapWriter{done: make(chan error, 1)}
	w.written.Store(first)
	app := &clwWriter{path: path}
	go func() {
		var buf []byte
		for seq := first; !w.stop.Load(); seq++ {
			buf = swapLine(buf, seq)
			if err := app.append(buf); err != nil {
				w.done <- err
				return
			}
			w.written.Store(seq + 1)
		}
		w.done <- nil
	}()
	return w
}

// finish stops the writer and returns how many records it wrote.
func (w *swapWriter) finish() (int64, error) {
	w.stop.Store(true)
	select {
	case err := <-w.done:
		return w.written.Load(), err
	case <-time.After(60 * time.Second):
		return w.written.Load(), errors.New("the writer did not stop within 60s (an open waiting on a lease?)")
	}
}

// swapMaster is a file of the records [0, swapMaxLines) that rounds copy
// their first records from (copy_file_range: no pass over the bytes in this
// process, which may run under the race detector).
type swapMaster struct {
	path string
	ends []int64 // ends[n] is the size of the records [0, n)
}

func writeSwapMaster(path string) (*swapMaster, error) {
	m := &swapMaster{path: path, ends: make([]int64, 1, swapMaxLines+1)}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	var buf []byte
	for seq := range int64(swapMaxLines) {
		buf = swapLine(buf, seq)
		bw.Write(buf)
		m.ends = append(m.ends, m.ends[len(m.ends)-1]+int64(len(buf)))
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return nil, err
	}
	return m, f.Close()
}

// prefill writes the records [0, n) to path.
func (m *swapMaster) prefill(path string, n int64) error {
	src, err := os.Open(m.path)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, io.LimitReader(src, m.ends[n])); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// swapScan is what a read of the target found.
type swapScan struct {
	lines        int
	torn         int // lines that are not exactly one of the writer's records
	dups         int // records present once more
	outOfOrder   int // places where a record follows a newer one (dups aside)
	count        []uint8
	min, max     int64 // of the records present; min > max when none
	unterminated bool
	evidence     []string
}

func (s *swapScan) note(format string, a ...any) {
	if len(s.evidence) < 8 {
		s.evidence = append(s.evidence, fmt.Sprintf(format, a...))
	}
}

// scanSwapTarget reads path, mapped into memory (see swapSeq), line by
// line; records are below limit.
func scanSwapTarget(path string, limit int64) (*swapScan, error) {
	s := &swapScan{count: make([]uint8, limit), min: limit, max: -1}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return s, err
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	defer syscall.Munmap(data)
	at := make([]int64, limit) // offset of each record's first copy
	prev, prevOff := int64(-1), int64(-1)
	var scratch []byte
	for off := 0; off < len(data); {
		line := data[off:]
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line = line[:i+1]
		} else {
			s.unterminated = true
		}
		s.lines++
		seq, ok := swapSeq(line, &scratch)
		switch {
		case !ok || seq >= limit:
			s.torn++
			if nul := bytes.Count(line, []byte{0}); nul > 0 {
				s.note("torn: line %d at offset %d (%d bytes, %d NUL): %q", s.lines, off, len(line), nul, clipBytes(line, 160))
			} else {
				s.note("torn: line %d at offset %d (%d bytes): %q", s.lines, off, len(line), clipBytes(line, 160))
			}
		case s.count[seq] > 0:
			s.dups++
			s.note("dup: record %d at offset %d, again at offset %d (after record %d)", seq, at[seq], off, prev)
		case seq < prev:
			s.outOfOrder++
			s.note("out of order: record %d at offset %d follows record %d at offset %d", seq, off, prev, prevOff)
		}
		if ok && seq < limit {
			if s.count[seq] == 0 {
				at[seq] = int64(off)
			}
			if s.count[seq] < 255 {
				s.count[seq]++
			}
			s.min, s.max = min(s.min, seq), max(s.max, seq)
			prev, prevOff = seq, int64(off)
		}
		off += len(line)
	}
	return s, nil
}

// clipBytes shortens a line for evidence.
func clipBytes(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return append(append(slices.Clone(b[:n/2]), "…"...), b[len(b)-n/2:]...)
}

// missing counts the records of [lo, hi) that are absent, and describes the
// first runs of them.
func (s *swapScan) missing(lo, hi int64) (int, []string) {
	var n int
	var runs []string
	for q := max(lo, 0); q < hi; {
		if s.count[q] > 0 {
			q++
			continue
		}
		e := q
		for e < hi && s.count[e] == 0 {
			e++
		}
		n += int(e - q)
		if len(runs) < 5 {
			runs = append(runs, fmt.Sprintf("[%d, %d)", q, e))
		}
		q = e
	}
	return n, runs
}

type swapKillMode int

const (
	swapNoKill swapKillMode = iota // calibration
	swapAimed                      // just after the rename
	swapRandom                     // at a random instant of the run
)

func (m swapKillMode) String() string {
	return [...]string{"none", "aimed", "random"}[m]
}

// swapTotals add up the campaign.
type swapTotals struct {
	rounds, aimed, midSwap, spliced, completed int
	states                                     map[string]int // where kills left the swap
	viaDaemon                                  int
	dups, outOfOrder, torn, lost, extra        int
	failed                                     int
}

// swapCampaign holds what the rounds share.
type swapCampaign struct {
	t                  *testing.T
	seed               uint64
	data, state, path  string
	cfg, cfgAll        string
	master             *swapMaster
	typical            time.Duration // an unkilled compaction, for random kills
	tot                swapTotals
	renameAt, duration []time.Duration
}

func TestCrashSwapAimed(t *testing.T) {
	rounds := envInt(t, "WATCHER_SWAP_CRASH_ROUNDS", 40)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("WATCHER_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("WATCHER_CRASH_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("WATCHER_CRASH_SEED=%d rounds=%d", seed, rounds)
	dir := t.TempDir()
	c := &swapCampaign{t: t, seed: seed, data: filepath.Join(dir, "data"), state: filepath.Join(dir, "state")}
	c.path = filepath.Join(c.data, "events.ndjson")
	// No trigger of `watcher run` can fire: it only recovers. The target
	// sets method = "copy": the campaign aims its kills at the rename and
	// the drain of the rewrite (an in-place compaction keeps the inode and
	// has neither; TestCrashLiveWriter and TestInPlaceLiveWriterKill kill
	// it).
	header := fmt.Sprintf(`[watcher]
state_dir = %q
http_listen = ""
log_level = "info"

[policy]
partial_line_grace = "876000h"

[triggers.timer]
interval = "0s"

[triggers.retention]
interval = "0s"

[triggers.growth]
min_bytes = 1000000000000000
min_ratio = 1000

[triggers.disk]
interval = "1h"
high_percent = 100
low_percent = 99.9
predict_horizon = "0s"

[[target]]
name = "events"
backend = "json"
path = %q
method = "copy"
`, c.state, c.path)
	c.cfg = writeConfig(t, dir, header+fmt.Sprintf("\n[target.retention]\nmax_records = %d\n", swapKeep))
	c.cfgAll = filepath.Join(dir, "keep-all.toml")
	writeFile(t, c.cfgAll, []byte(header))

	start := time.Now()
	var err error
	if c.master, err = writeSwapMaster(filepath.Join(dir, "master.ndjson")); err != nil {
		t.Fatal(err)
	}
	// Calibration: an unkilled round (checked like the others) gives the
	// run time that random kills are drawn in.
	c.round(-1, swapNoKill)
	if len(c.duration) == 0 || t.Failed() {
		t.Fatal("the calibration round failed")
	}
	c.typical = c.duration[0]
	t.Logf("an unkilled compaction with the writer going takes %s (rename at %s)", c.typical, c.renameAt)
	c.renameAt, c.duration = nil, nil
	for r := range rounds {
		mode := swapAimed
		if rand.New(rand.NewPCG(seed, uint64(r)+1<<32)).IntN(5) == 0 {
			mode = swapRandom
		}
		c.round(r, mode)
	}
	tot := c.tot
	t.Logf("%d rounds in %s: kills after the rename %d (before the end of the swap: %d; recoveries that put lines back in order: %d), compactions done before the kill %d; recovered by `watcher run` %d, by a keep-all compaction %d; kept records older than the cut %d; failed rounds %d",
		tot.rounds, time.Since(start).Round(time.Millisecond), tot.aimed, tot.midSwap, tot.spliced, tot.completed,
		tot.viaDaemon, tot.rounds-tot.viaDaemon, tot.extra, tot.failed)
	t.Logf("where the kills left the swap: %v", tot.states)
	if len(c.renameAt) > 0 {
		t.Logf("rename at (ms after the start of watcher compact): %s", durStats(c.renameAt))
	}
	sum, _ := json.Marshal(struct {
		Rounds     int `json:"rounds"`
		Aimed      int `json:"aimed"`
		Dups       int `json:"dups"`
		OutOfOrder int `json:"out_of_order"`
		Torn       int `json:"torn"`
		Lost       int `json:"lost"`
	}{tot.rounds, tot.aimed, tot.dups, tot.outOfOrder, tot.torn, tot.lost})
	t.Logf("%s", sum)
	if tot.aimed*2 <= tot.rounds {
		t.Errorf("only %d of %d kills landed after the rename: the campaign is not aimed (raise WATCHER_SWAP_CRASH_ROUNDS or look at the timing above)", tot.aimed, tot.rounds)
	}
}

// durStats summarizes durations in milliseconds: min, median, max.
func durStats(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return fmt.Sprintf("min %.1f, median %.1f, max %.1f", ms(s[0]), ms(s[len(s)/2]), ms(s[len(s)-1]))
}

// killInfo is what the killer saw.
type killInfo struct {
	sent        bool
	afterRename bool          // the inode had changed when the kill was sent
	renamedAt   time.Duration // when the inode change was seen
	written     int64         // the writer's count just before the kill
}

// round runs one round; r < 0 is the calibration round.
func (c *swapCampaign) round(r int, mode swapKillMode) {
	t := c.t
	t.Helper()
	rng := rand.New(rand.NewPCG(c.seed, uint64(r+1)))
	var ev []string // evidence, for a failure message
	evf := func(format string, a ...any) { ev = append(ev, fmt.Sprintf(format, a...)) }
	bad := false
	fail := func(format string, a ...any) {
		bad = true
		evf(format, a...)
	}

	var laps []string // how long each phase took
	last := time.Now()
	lap := func(name string) {
		now := time.Now()
		laps = append(laps, fmt.Sprintf("%s %s", name, now.Sub(last).Round(time.Millisecond)))
		last = now
	}
	for _, d := range []string{c.data, c.state} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n := swapMinLines + rng.Int64N(swapMaxLines-swapMinLines+1)
	if err := c.master.prefill(c.path, n); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(c.path)
	if err != nil {
		t.Fatal(err)
	}
	ino0 := fi.Sys().(*syscall.Stat_t).Ino
	lap("prefill")
	delay := time.Duration(rng.Int64N(int64(swapMaxKillDelay) + 1))
	if mode == swapAimed && rng.IntN(4) == 0 { // late
		delay = swapMaxKillDelay + time.Duration(rng.Int64N(int64(swapMaxLateDelay-swapMaxKillDelay)+1))
	}
	if mode == swapRandom {
		delay = time.Duration(rng.Int64N(int64(c.typical)*12/10 + 1))
	}
	after := time.Millisecond + time.Duration(rng.Int64N(int64(20*time.Millisecond)))
	viaDaemon := rng.IntN(2) == 0
	evf("mode %s, kill delay %s, %d records before, writer on for %s after the kill, recovery by %s",
		mode, delay, n, after, map[bool]string{true: "watcher run", false: "a keep-all compaction"}[viaDaemon])

	w := startSwapWriter(c.path, n)
	defer w.stop.Store(true) // on the way out of a failed round
	cmd := exec.Command(watcherBin, "compact", "--config", c.cfg, "--json")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	started := time.Now()
	if err := cmd.Start(); err != nil {
		w.finish()
		t.Fatal(err)
	}
	exited := make(chan struct{})
	killerDone := make(chan struct{})
	var k killInfo
	go func() {
		defer close(killerDone)
		kill := func() {
			fi, err := os.Stat(c.path)
			k.afterRename = err == nil && fi.Sys().(*syscall.Stat_t).Ino != ino0
			k.written = w.written.Load()
			k.sent = cmd.Process.Signal(syscall.SIGKILL) == nil
		}
		switch mode {
		case swapAimed:
			for {
				select {
				case <-exited:
					return
				default:
				}
				fi, err := os.Stat(c.path)
				if err != nil || fi.Sys().(*syscall.Stat_t).Ino == ino0 {
					continue
				}
				k.renamedAt = time.Since(started)
				// A busy wait: timers are not that precise.
				for t0 := time.Now(); time.Since(t0) < delay; {
				}
				kill()
				return
			}
		case swapRandom:
			select {
			case <-exited:
			case <-time.After(delay):
				kill()
			}
		case swapNoKill:
			for {
				select {
				case <-exited:
					return
				default:
				}
				if fi, err := os.Stat(c.path); err == nil && fi.Sys().(*syscall.Stat_t).Ino != ino0 {
					k.renamedAt = time.Since(started)
					<-exited
					return
				}
			}
		}
	}()
	timer := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	cmd.Wait()
	ran := time.Since(started)
	timer.Stop()
	close(exited)
	<-killerDone
	lap("compact")
	if !k.sent {
		k.written = w.written.Load()
	}
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	killed := ws.Signaled()
	// Whether the rename happened, now that the compaction is dead.
	fi, err = os.Stat(c.path)
	if err != nil {
		t.Fatal(err)
	}
	swapped := fi.Sys().(*syscall.Stat_t).Ino != ino0
	if k.renamedAt > 0 {
		c.renameAt = append(c.renameAt, k.renamedAt)
	}
	if !killed {
		c.duration = append(c.duration, ran)
	}
	if r >= 0 {
		c.tot.rounds++
		if killed && swapped {
			c.tot.aimed++
		}
		if !killed {
			c.tot.completed++
		}
	}
	switch {
	case killed && !k.sent:
		fail("watcher compact was killed by something else (%v) after %s:\n%s", ws.Signal(), ran, clip(out.Bytes()))
	case !killed && ws.ExitStatus() != 0:
		fail("watcher compact failed on its own (exit %d) after %s:\n%s", ws.ExitStatus(), ran, clip(out.Bytes()))
	}
	if out.Len() > 0 {
		evf("watcher compact said:\n%s", clip(out.Bytes()))
	}
	evf("compact ran %s, killed %v (the rename seen at %s; at the kill %v; at the end %v), writer at %d records at the kill",
		ran, killed, k.renamedAt, k.afterRename, swapped, k.written)
	// The state the kill left, for the totals and the evidence.
	killState := "-"
	if killed {
		killState = c.killState(r, swapped, evf)
	}

	// The writer goes on, on the new file if the rename happened.
	time.Sleep(after)
	written, err := w.finish()
	if err != nil {
		t.Fatalf("round %d: writer: %v", r, err)
	}
	evf("the writer wrote records [0, %d)", written)
	lap("writer")

	// Recovery.
	var recoveryLog string
	if viaDaemon {
		if r >= 0 {
			c.tot.viaDaemon++
		}
		var msg string
		recoveryLog, msg = recoverWithDaemon(c.cfg)
		if msg != "" {
			fail("watcher run: %s", msg)
		}
	} else {
		res := runWatcher(t, 2*time.Minute, "compact", "--config", c.cfgAll, "--json")
		recoveryLog = res.Stderr
		if res.Code != 0 {
			fail("keep-all compaction: exit %d:\n%s", res.Code, clip([]byte(res.Stderr+res.Stdout)))
		} else if reps := parseReports(t, res.Stdout); len(reps) != 1 || reps[0].Error != "" {
			fail("keep-all compaction: %s", res.Stdout)
		} else if inv := reps[0].Dropped.Invalid; inv > 0 {
			// Recovery left lines that are not records: torn.
			c.tot.torn += int(inv)
			fail("the keep-all compaction dropped %d lines that were not records", inv)
		}
	}
	if strings.Contains(recoveryLog, "back in order") && r >= 0 {
		c.tot.spliced++
	}
	evf("recovery logged:\n%s", clip([]byte(recoveryLog)))
	lap("recover")
	c.check(fail, "after recovery", written, func(s *swapScan) (int64, int64) {
		if !swapped {
			return 0, written
		}
		// Everything since the cut of the killed compaction: it kept the
		// newest swapKeep of the records complete when it started, which
		// were at least the n written before and at most k.written+1
		// (one write may have been in flight at the kill).
		return min(max(s.min, n-swapKeep), k.written+1-swapKeep), written
	})
	lap("check")

	// The max_records compaction, unkilled, with the writer stopped.
	res := runWatcher(t, 2*time.Minute, "compact", "--config", c.cfg, "--json")
	if res.Code != 0 {
		fail("final compaction: exit %d:\n%s", res.Code, clip([]byte(res.Stderr+res.Stdout)))
	} else if reps := parseReports(t, res.Stdout); len(reps) != 1 || reps[0].Error != "" || reps[0].AfterRecords != swapKeep {
		fail("final compaction: %s", res.Stdout)
	}
	lap("final")
	c.check(fail, "after the max_records compaction", written, func(*swapScan) (int64, int64) {
		return written - swapKeep, written
	})
	lap("check")

	if testing.Verbose() {
		t.Logf("round %d: %s n=%d delay=%s renamed=%s ran=%s killed=%v swapped=%v state=%q spliced=%v written=%d; %s",
			r, mode, n, delay.Round(time.Microsecond), k.renamedAt.Round(time.Microsecond), ran.Round(time.Microsecond), killed, swapped,
			killState, strings.Contains(recoveryLog, "back in order"), written, strings.Join(laps, ", "))
	}
	if bad {
		c.tot.failed++
		if c.tot.failed <= 5 {
			t.Errorf("round %d (WATCHER_CRASH_SEED=%d):\n  %s", r, c.seed, strings.Join(ev, "\n  "))
		}
	}
}

// killState describes where the kill left the swap, from the files it left,
// and counts it.
func (c *swapCampaign) killState(r int, swapped bool, evf func(string, ...any)) string {
	links, _ := filepath.Glob(filepath.Join(c.data, ".events.ndjson.watcher-old*"))
	journals, _ := filepath.Glob(filepath.Join(c.state, "*.journal"))
	evf("left by the kill: old links %v, in the state directory %v", baseNames(links), leftovers(c.t, c.state))
	var jr struct {
		NewIno uint64 `json:"new_ino"`
		Slot   *struct {
			Reserved bool `json:"reserved"`
		} `json:"slot"`
	}
	journaled := false
	for _, j := range journals {
		data, err := os.ReadFile(j)
		if err != nil {
			continue
		}
		var compact bytes.Buffer
		if json.Compact(&compact, data) == nil {
			data = compact.Bytes()
		}
		evf("journal %s: %s", filepath.Base(j), data)
		journaled = journaled || json.Unmarshal(data, &jr) == nil && jr.NewIno != 0
	}
	var ino uint64
	if fi, err := os.Stat(c.path); err == nil {
		ino = fi.Sys().(*syscall.Stat_t).Ino
	}
	renamed := journaled && ino == jr.NewIno
	state := "before the swap"
	if swapped {
		state = "swap finished"
	}
	switch {
	case !journaled && len(links) > 0:
		state = "linked, not journaled"
	case journaled && !renamed:
		state = "journaled, not renamed"
	case renamed && len(links) == 0:
		state = "drained, old link removed"
	case renamed && jr.Slot == nil:
		state = "draining, no slot in flight"
	case renamed && !jr.Slot.Reserved:
		state = "draining, slot journaled"
	case renamed:
		state = "draining, slot reserved"
	}
	if r >= 0 {
		if renamed && len(links) > 0 {
			c.tot.midSwap++
		}
		if c.tot.states == nil {
			c.tot.states = map[string]int{}
		}
		c.tot.states[state]++
	}
	return state
}

// check reads the target and fails unless it is exactly the records
// [lo, hi) in order (want gives lo and hi from what was read), and unless
// nothing is left behind.
func (c *swapCampaign) check(fail func(string, ...any), when string, written int64, want func(*swapScan) (int64, int64)) {
	s, err := scanSwapTarget(c.path, written)
	if err != nil {
		fail("%s: %v", when, err)
		return
	}
	lo, hi := want(s)
	lost, runs := s.missing(lo, hi)
	var extra int
	for q := int64(0); q < lo; q++ {
		if s.count[q] > 0 {
			extra++
		}
	}
	c.tot.dups += s.dups
	c.tot.outOfOrder += s.outOfOrder
	c.tot.torn += s.torn
	c.tot.lost += lost
	c.tot.extra += extra
	if s.dups+s.outOfOrder+s.torn+lost+extra > 0 || s.unterminated {
		fail("%s: %d lines, records %d..%d, want [%d, %d): %d torn, %d duplicated, %d out of order, %d missing %v, %d older than the cut, unterminated %v; first: %s",
			when, s.lines, s.min, s.max, lo, hi, s.torn, s.dups, s.outOfOrder, lost, runs, extra, s.unterminated, strings.Join(s.evidence, "; "))
	}
	if hi > 0 && s.count[hi-1] == 0 {
		fail("%s: the writer's last record %d is missing", when, hi-1)
	}
	for _, d := range []string{c.data, c.state} {
		if l := leftovers(c.t, d); len(l) > 0 {
			fail("%s: left in %s: %v", when, filepath.Base(d), l)
		}
	}
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}

// recoverWithDaemon starts `watcher run`, which recovers interrupted
// compactions before anything else, and stops it once it runs. It returns
// the daemon's log and, if something went wrong, what.
func recoverWithDaemon(config string) (string, string) {
	cmd := exec.Command(watcherBin, "run", "--config", config)
	var log testlog.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		return "", err.Error()
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(60 * time.Second)
	for !strings.Contains(log.String(), "watcher running") {
		select {
		case err := <-done:
			return log.String(), fmt.Sprintf("exited before it ran (%v):\n%s", err, clip([]byte(log.String())))
		case <-deadline:
			cmd.Process.Kill()
			<-done
			return log.String(), fmt.Sprintf("not running after 60s:\n%s", clip([]byte(log.String())))
		case <-time.After(5 * time.Millisecond):
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			return log.String(), fmt.Sprintf("SIGTERM: %v:\n%s", err, clip([]byte(log.String())))
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		return log.String(), fmt.Sprintf("did not exit within 30s of SIGTERM:\n%s", clip([]byte(log.String())))
	}
	if strings.Contains(log.String(), "recovering interrupted compactions") {
		return log.String(), fmt.Sprintf("recovery failed:\n%s", clip([]byte(log.String())))
	}
	return log.String(), ""
}
