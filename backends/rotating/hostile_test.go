package rotating

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/internal/testutil"
)

// TestRotatingFIFOAtEveryPosition: a FIFO at any name of the set is refused
// at once with ErrNotRegular naming it, by Compact (dry run or not), Scan
// and Recover, before anything is created: no placeholder, no staging
// directory, no journal.
func TestRotatingFIFOAtEveryPosition(t *testing.T) {
	const maxFiles = 3
	for pos := 0; pos < maxFiles; pos++ {
		t.Run(fmt.Sprintf("index%d", pos), func(t *testing.T) {
			s := newRotSet(t, 200, maxFiles)
			files := map[int]string{}
			for i := 0; i < maxFiles-1; i++ { // the oldest name is absent: a placeholder would be made there
				if i != pos {
					files[i] = rec(10-i, 1) + rec(20-i, 1)
				}
			}
			s.write(t, files)
			fifo := segName(s.path, pos)
			testutil.Mkfifo(t, fifo)
			t.Cleanup(func() { testutil.UnblockFIFO(fifo) })
			before := s.layout(t)
			b := s.backend(t)
			for _, dry := range []bool{true, false} {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				testutil.Within(t, 5*time.Second, fmt.Sprintf("Compact (dry run %v) with a FIFO at %s", dry, fifo), func() {
					_, err := b.Compact(ctx, backends.CompactOptions{DryRun: dry})
					if !errors.Is(err, backends.ErrNotRegular) || !strings.Contains(err.Error(), fifo) || !strings.Contains(err.Error(), "FIFO") {
						t.Errorf("dry run %v: got %v, want ErrNotRegular naming %s as a FIFO", dry, err, fifo)
					}
				})
				cancel()
				sameLayout(t, s.layout(t), before)
				s.noStateLeft(t)
			}
			testutil.Within(t, 5*time.Second, "Scan with a FIFO", func() {
				an, err := b.Scan(context.Background())
				if err != nil {
					t.Errorf("scan: %v", err)
				}
				found := false
				for _, a := range an {
					found = found || a.Type == backends.AnomalyUnreadable && a.Path == fifo && strings.Contains(a.Detail, "FIFO")
				}
				if !found {
					t.Errorf("scan did not report the FIFO as unreadable: %+v", an)
				}
			})
			testutil.Within(t, 5*time.Second, "Recover with a FIFO", func() {
				if err := b.Recover(context.Background()); err != nil {
					t.Errorf("recover: %v", err)
				}
			})
			testutil.Within(t, 5*time.Second, "Stat with a FIFO", func() {
				if _, err := b.Stat(context.Background()); err != nil {
					t.Errorf("stat: %v", err)
				}
			})
			sameLayout(t, s.layout(t), before)
		})
	}
}

// TestRotatingStateFIFO: a FIFO at the journal's or the lock's name in the
// state directory is refused, not waited on.
func TestRotatingStateFIFO(t *testing.T) {
	for _, which := range []string{".journal", ".lock"} {
		t.Run(which, func(t *testing.T) {
			s := newRotSet(t, 200, 3)
			s.write(t, map[int]string{0: rec(1, 1)})
			os.MkdirAll(s.state, 0o700)
			fifo := filepath.Join(s.state, fsx.StateName(backends.KindRotating, "t", s.path, which))
			testutil.Mkfifo(t, fifo)
			t.Cleanup(func() { testutil.UnblockFIFO(fifo) })
			before := s.layout(t)
			testutil.Within(t, 5*time.Second, "Compact with a FIFO in the state directory", func() {
				if _, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{}); !errors.Is(err, backends.ErrNotRegular) {
					t.Errorf("got %v, want ErrNotRegular", err)
				}
			})
			sameLayout(t, s.layout(t), before)
		})
	}
}

// inotifyWatch reports every event on dir and the entries in it.
type inotifyWatch struct{ fd int }

func newInotifyWatch(t *testing.T, dir string) *inotifyWatch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Skipf("inotify: %v", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_ALL_EVENTS); err != nil {
		unix.Close(fd)
		t.Skipf("inotify: %v", err)
	}
	return &inotifyWatch{fd: fd}
}

// events returns what happened since the watch began, and stops watching.
func (w *inotifyWatch) events() []string {
	defer unix.Close(w.fd)
	var out []string
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(w.fd, buf)
		if err != nil || n <= 0 {
			return out
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := ""
			if ev.Len > 0 {
				raw := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				name = strings.TrimRight(string(raw), "\x00")
			}
			out = append(out, fmt.Sprintf("%q mask %#x", name, ev.Mask))
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

// dirIdentity is name → inode, size and content of every entry of dir.
func dirIdentity(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := os.Lstat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		_, ino := fsx.InodeOf(fi)
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		out[e.Name()] = fmt.Sprintf("ino %d mode %v %q", ino, fi.Mode(), b)
	}
	return out
}

// dirSwap replaces a directory by a link to another one and puts it back.
type dirSwap struct {
	t                  *testing.T
	data, away, linkTo string
	swapped            bool
}

// swap renames data away and makes data a link to linkTo.
func (w *dirSwap) swap() {
	w.t.Helper()
	if err := os.Rename(w.data, w.away); err != nil {
		w.t.Fatalf("swap: %v", err)
	}
	if err := os.Symlink(w.linkTo, w.data); err != nil {
		w.t.Fatalf("swap: %v", err)
	}
	w.swapped = true
}

// restore undoes swap.
func (w *dirSwap) restore() {
	w.t.Helper()
	if !w.swapped {
		return
	}
	if err := os.Remove(w.data); err != nil {
		w.t.Fatalf("restore: %v", err)
	}
	if err := os.Rename(w.away, w.data); err != nil {
		w.t.Fatalf("restore: %v", err)
	}
	w.swapped = false
}

// hostileSet makes a set in base/data and a decoy set of the same names in
// base/victim, and returns the set, its backend and its content. A
// compaction of the set merges its three files into two: it creates the
// placeholder and removes an old segment.
func hostileSet(t *testing.T, base string) (*rotSet, *Set, string) {
	t.Helper()
	data, victim := filepath.Join(base, "data"), filepath.Join(base, "victim")
	for _, d := range []string{data, victim} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := &rotSet{dir: data, path: filepath.Join(data, "papyra.log"), state: filepath.Join(t.TempDir(), "state"), maxBytes: 1000, maxFiles: 4, method: backends.MethodCopy}
	var a, b1, b2 string
	for i := 0; i < 4; i++ {
		b2 += rec(i, 1)
		b1 += rec(10+i, 1)
		a += rec(20+i, 1)
	}
	s.write(t, map[int]string{0: a, 1: b1, 2: b2})
	decoy := &rotSet{dir: victim, path: filepath.Join(victim, "papyra.log"), maxFiles: 4}
	decoy.write(t, map[int]string{0: rec(900, 1), 1: rec(800, 1), 2: rec(700, 1)})
	os.WriteFile(filepath.Join(victim, "other"), []byte("keep\n"), 0o644)
	return s, s.backend(t), s.content(t)
}

// checkHostile checks that nothing happened in victim and that the set is
// whole, with nothing else beside it.
func checkHostile(t *testing.T, s *rotSet, victim string, watch *inotifyWatch, victimBefore map[string]string, want string) {
	t.Helper()
	if events := watch.events(); len(events) > 0 {
		t.Errorf("%d events in the other directory, e.g. %v", len(events), events[:min(len(events), 10)])
	}
	if got := dirIdentity(t, victim); fmt.Sprint(got) != fmt.Sprint(victimBefore) {
		t.Errorf("other directory changed:\n got %v\nwant %v", got, victimBefore)
	}
	if got := s.content(t); got != want {
		t.Errorf("set changed:\n got %q\nwant %q", got, want)
	}
	for name := range s.layout(t) {
		if name != "papyra.log" && !strings.HasPrefix(name, "papyra.log.") {
			t.Errorf("leftover %s in the set's directory", name)
		}
	}
}

// TestRotatingParentSwapAtEveryPoint: at every step of a compaction, and
// of a Recover after a crash at every step, the set's directory is renamed
// away and its name made a link to another directory holding a set of the
// same names. The operation must finish in the set's own directory: nothing
// may be opened, created, linked, renamed or removed in the other one.
func TestRotatingParentSwapAtEveryPoint(t *testing.T) {
	var points []string
	{
		s, b, _ := hostileSet(t, t.TempDir())
		fsx.SetCrashHook(func(p string) error { points = append(points, p); return nil })
		_, err := b.Compact(context.Background(), backends.CompactOptions{})
		fsx.SetCrashHook(nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = s
	}
	defer func() { fsx.SetCrashHook(nil) }()
	if !slices.Contains(points, "placeholder") || !slices.Contains(points, "remove:papyra.log.2") {
		t.Fatalf("only %d hook points: %v", len(points), points)
	}
	for _, point := range points {
		for _, crash := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/crash=%v", point, crash), func(t *testing.T) {
				base := t.TempDir()
				s, b, want := hostileSet(t, base)
				victim := filepath.Join(base, "victim")
				w := &dirSwap{t: t, data: s.dir, away: filepath.Join(base, "data.away"), linkTo: "victim"}
				defer w.restore()
				victimBefore := dirIdentity(t, victim)
				watch := newInotifyWatch(t, victim)
				if !crash {
					fsx.SetCrashHook(func(p string) error {
						if p == point && !w.swapped {
							w.swap()
						}
						return nil
					})
					if _, err := b.Compact(context.Background(), backends.CompactOptions{}); err != nil {
						t.Errorf("compaction with the directory swapped at %s: %v", point, err)
					}
				} else {
					fsx.SetCrashHook(func(p string) error {
						if p == point {
							return errors.New("crash")
						}
						return nil
					})
					if _, err := b.Compact(context.Background(), backends.CompactOptions{}); !errors.Is(err, fsx.ErrSimulatedCrash) {
						t.Fatalf("got %v, want the simulated crash", err)
					}
					fsx.SetCrashHook(func(p string) error {
						if strings.HasPrefix(p, "recover:") && !w.swapped {
							w.swap()
						}
						return nil
					})
					if err := b.Recover(context.Background()); err != nil {
						t.Errorf("recover with the directory swapped: %v", err)
					}
				}
				fsx.SetCrashHook(nil)
				w.restore()
				if err := b.Recover(context.Background()); err != nil {
					t.Fatal(err)
				}
				checkHostile(t, s, victim, watch, victimBefore, want)
			})
		}
	}
}

// TestRotatingParentSwapDoesNotEscape: while compactions run, the set's
// directory is renamed away again and again and its name made a link to
// another directory holding a set of the same names, then put back. Nothing
// may ever be opened, created, linked, renamed or removed in that other
// directory, and the set must come out whole.
func TestRotatingParentSwapDoesNotEscape(t *testing.T) {
	base := t.TempDir()
	s, b, want := hostileSet(t, base)
	data, away, victim := s.dir, filepath.Join(base, "data.away"), filepath.Join(base, "victim")
	victimBefore := dirIdentity(t, victim)
	watch := newInotifyWatch(t, victim)

	var stop atomic.Bool
	var wg sync.WaitGroup
	var swaps atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if os.Rename(data, away) != nil {
				continue
			}
			os.Symlink("victim", data)
			runtime.Gosched()
			if fi, err := os.Lstat(data); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
				os.Remove(data)
			}
			if err := os.Rename(away, data); err != nil {
				t.Errorf("put the directory back: %v", err)
				return
			}
			swaps.Add(1)
			time.Sleep(time.Duration(rand.IntN(400)) * time.Microsecond)
		}
	}()
	const rounds = 200
	worked, swappedDuring := 0, 0
	errs := map[string]int{}
	hex := regexp.MustCompile(`[0-9a-f]{16}`)
	for i := 0; i < rounds; i++ {
		before := swaps.Load()
		rep, err := b.Compact(context.Background(), backends.CompactOptions{})
		switch {
		case err != nil:
			msg := hex.ReplaceAllString(strings.ReplaceAll(err.Error(), base, "BASE"), "X")
			errs[msg[:min(len(msg), 100)]]++
		case rep.BeforeRecords > 0:
			worked++
			if swaps.Load() != before {
				swappedDuring++
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	if err := b.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkHostile(t, s, victim, watch, victimBefore, want)
	// How often a compaction met a swap depends on scheduling; every step
	// is covered deterministically by TestRotatingParentSwapAtEveryPoint.
	t.Logf("%d swaps; %d of %d compactions did the work, %d of them while the directory was swapped; errors: %v",
		swaps.Load(), worked, rounds, swappedDuring, errs)
}
