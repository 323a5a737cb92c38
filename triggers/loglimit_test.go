package triggers

import (
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/papyra/watcher/internal/testlog"
)

// lines returns the log lines of buf that contain s.
func lines(buf *testlog.Buffer, s string) []string {
	var out []string
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

var suppressedAttr = regexp.MustCompile(` suppressed=(\d+)`)

// suppressedIn returns the suppressed=N attribute of a line, 0 if none.
func suppressedIn(t *testing.T, line string) int {
	t.Helper()
	m := suppressedAttr.FindStringSubmatch(line)
	if m == nil {
		return 0
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		t.Fatalf("suppressed in %q: %v", line, err)
	}
	return n
}

func TestLogLimiterFloodThenQuiet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		buf := &testlog.Buffer{}
		l := newLogLimiter(slog.New(slog.NewTextHandler(buf, nil)), 10*time.Second)
		t0 := time.Now()
		for i := range 1000 {
			l.Log(slog.LevelWarn, "bad", "request refused", "i", i)
			time.Sleep(20 * time.Microsecond)
		}
		l.Log(slog.LevelWarn, "busy", "node busy")
		synctest.Wait()
		if got := lines(buf, "request refused"); len(got) != 1 || !strings.Contains(got[0], " i=0") || suppressedIn(t, got[0]) != 0 {
			t.Fatalf("after a flood of 1000 in 20ms: %q, want the first line only", got)
		}
		if got := lines(buf, "node busy"); len(got) != 1 {
			t.Fatalf("another key: %q, want its own line", got)
		}

		// At the end of the window: one line for the 999 others, the last.
		time.Sleep(10*time.Second - time.Since(t0))
		synctest.Wait()
		got := lines(buf, "request refused")
		if len(got) != 2 || !strings.Contains(got[1], "request refused (999 similar suppressed in the last 10s)") ||
			suppressedIn(t, got[1]) != 999 || !strings.Contains(got[1], " i=999") || !strings.Contains(got[1], "level=WARN") {
			t.Fatalf("at the window's end: %q", got)
		}

		// Quiet: nothing more; the next line, after the summary's window,
		// is logged at once and plainly.
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if got := lines(buf, "request refused"); len(got) != 2 {
			t.Fatalf("quiet: %q", got)
		}
		l.Log(slog.LevelWarn, "bad", "request refused", "i", 1000)
		synctest.Wait()
		if got := lines(buf, "request refused"); len(got) != 3 || !strings.Contains(got[2], " i=1000") || suppressedIn(t, got[2]) != 0 {
			t.Fatalf("after the quiet: %q", got)
		}
	})
}

// TestLogLimiterSteadyFlood: a flood that goes on logs one line per
// interval, and every event is either logged or counted.
func TestLogLimiterSteadyFlood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		buf := &testlog.Buffer{}
		l := newLogLimiter(slog.New(slog.NewTextHandler(buf, nil)), 10*time.Second)
		const workers, each = 4, 10000
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for range each {
					l.Log(slog.LevelWarn, "bad", "request refused")
					time.Sleep(3500 * time.Microsecond) // 35s in all
				}
			})
		}
		wg.Wait()
		l.Flush()
		got := lines(buf, "request refused")
		// 0s, summaries at 10s, 20s, 30s, and the flush at 35s.
		if len(got) != 5 {
			t.Errorf("%d lines for a 35s flood, want 5: %q", len(got), got)
		}
		total := 0
		for _, line := range got {
			total += 1 + suppressedIn(t, line)
		}
		// A summary line stands for the lines it counts, not for one more.
		if total-(len(got)-1) != workers*each {
			t.Errorf("lines and counts account for %d events, want %d: %q", total-(len(got)-1), workers*each, got)
		}
		if !strings.Contains(got[len(got)-1], "similar suppressed in the last 5s") {
			t.Errorf("flushed line %q: want the 5s gone by in its window", got[len(got)-1])
		}
		// Flush forgot the key: the next line is logged at once.
		l.Log(slog.LevelWarn, "bad", "request refused")
		time.Sleep(time.Minute)
		if got := lines(buf, "request refused"); len(got) != 6 || suppressedIn(t, got[5]) != 0 {
			t.Errorf("after Flush: %q", got)
		}
	})
}
