package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/papyra/watcher/snapshot"
	"github.com/papyra/watcher/triggers"
)

// defaultStatusAddr is where `watcher status` looks for the daemon: the
// default http_listen.
const defaultStatusAddr = "127.0.0.1:9464"

// maxStatusBody bounds the /status answer read by `watcher status`.
const maxStatusBody = 32 << 20

// runStatus is `watcher status [--addr HOST:PORT] [--json] [--timeout D]`:
// it asks a running daemon for GET /status and prints one row per target,
// or the JSON document itself with --json. Exit 0 on an answer, 1 when the
// daemon cannot be reached or does not answer 200, 2 on bad usage.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("status", "watcher status [--addr HOST:PORT | --nats URL [--prefix P]] [--json] [--timeout D]",
		`Asks a running daemon for GET /status and prints one row per target (the
JSON document with --json). Exit 0 on an answer, 1 when the daemon cannot be
reached or does not answer 200, 2 on bad usage.`, stderr)
	addr := fs.String("addr", defaultStatusAddr, "the daemon's http_listen address, HOST:PORT (or an http:// URL)")
	asJSON := fs.Bool("json", false, "print the /status JSON document instead of a table")
	timeout := fs.Duration("timeout", 5*time.Second, "give up when the daemon has not answered within this time")
	natsURL := fs.String("nats", "", "ask the whole fleet over NATS at this URL instead of one daemon over HTTP")
	prefix := fs.String("prefix", triggers.DefaultSubjectPrefix, "with --nats: the watchers' nats.subject_prefix")
	natsCfg := natsClientFlags(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return strayArgument(fs, fs.Arg(0), stderr)
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "watcher status: --timeout must be positive, got %s\n", *timeout)
		return exitBadConfig
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *natsURL != "" {
		if set["addr"] {
			fmt.Fprintln(stderr, "watcher status: --addr asks one daemon over HTTP, --nats the whole fleet over NATS: give one of them")
			return exitBadConfig
		}
		return runFleetStatus(ctx, natsCfg(*natsURL, *prefix), *asJSON, *timeout, stdout, stderr)
	}
	for _, name := range natsOnlyStatusFlags {
		if set[name] {
			fmt.Fprintf(stderr, "watcher status: --%s is for asking the fleet: it needs --nats URL\n", name)
			return exitBadConfig
		}
	}
	u, err := statusURL(*addr)
	if err != nil {
		fmt.Fprintf(stderr, "watcher status: %v\n", err)
		return exitBadConfig
	}

	body, err := fetchStatus(ctx, u, *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "watcher status: %v\n", err)
		return exitFailure
	}
	var doc StatusDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		fmt.Fprintf(stderr, "watcher status: the answer of %s is not a status document: %v\n", u, err)
		return exitFailure
	}
	if *asJSON {
		var buf bytes.Buffer
		if err := json.Indent(&buf, bytes.TrimSpace(body), "", "  "); err != nil {
			fmt.Fprintf(stderr, "watcher status: the answer of %s is not JSON: %v\n", u, err)
			return exitFailure
		}
		buf.WriteByte('\n')
		stdout.Write(buf.Bytes())
		return exitOK
	}
	renderStatus(stdout, doc, time.Now())
	return exitOK
}

// statusURL turns the --addr value into the URL of /status. HOST:PORT is
// taken as http; a full http:// or https:// URL is used as given, with
// /status as its path when it has none.
func statusURL(addr string) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", errors.New("--addr is empty; want HOST:PORT, for example " + defaultStatusAddr)
	}
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("--addr %q: want HOST:PORT or an http:// URL", addr)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/status"
		}
		return u.String(), nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("--addr %q: want HOST:PORT, for example %s: %v", addr, defaultStatusAddr, err)
	}
	return "http://" + addr + "/status", nil
}

// fetchStatus GETs u and returns the body of a 200 answer. Its errors name
// u and say what to check.
func fetchStatus(ctx context.Context, u string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("bad daemon address %s: %w", u, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the daemon at %s: %s — is `watcher run` running, with http_listen set?",
			u, statusReachError(err, timeout))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusBody))
	if err != nil {
		return nil, fmt.Errorf("reading the answer of the daemon at %s: %s", u, statusReachError(err, timeout))
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(body))
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		msg = statusShorten(msg, 200)
		if msg != "" {
			msg = ": " + msg
		}
		return nil, fmt.Errorf("the daemon at %s answered %s%s", u, resp.Status, msg)
	}
	return body, nil
}

// statusReachError says briefly why a request failed.
func statusReachError(err error, timeout time.Duration) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within %s", timeout)
	case errors.Is(err, context.Canceled):
		return "interrupted"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

// renderStatus writes doc as a table a person reads at a glance, then what
// needs attention: readiness, warnings, failures, disks under pressure and
// lost connections. now is the instant relative times are computed from.
func renderStatus(w io.Writer, doc StatusDoc, now time.Time) {
	head := []string{}
	if doc.Node != "" {
		head = append(head, "node "+doc.Node)
	}
	if doc.Version != "" {
		head = append(head, "version "+doc.Version)
	}
	if !doc.StartedAt.IsZero() {
		head = append(head, "up "+statusRoughDuration(now.Sub(doc.StartedAt)))
	}
	if doc.Ready {
		head = append(head, "ready")
	} else {
		head = append(head, "NOT READY")
	}
	fmt.Fprintln(w, strings.Join(head, " · "))
	fmt.Fprintln(w)

	if len(doc.Targets) == 0 {
		fmt.Fprintln(w, "no targets")
	} else {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TARGET\tBACKEND\tSIZE\tLAST RUN\tRESULT\tRECLAIMED\tSTATE\tSNAPSHOTS\tWARNINGS")
		for _, t := range doc.Targets {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
				t.Name, statusOrDash(t.Backend), statusSizeText(t.SizeBytes), statusLastRunText(t, now), statusResultText(t),
				statusReclaimedText(t), statusStateText(t, now), statusSnapshotsText(t), statusWarningsText(t.Warnings))
		}
		tw.Flush()
	}
	if line := statusSnapshotsLine(doc, now); line != "" {
		fmt.Fprintln(w)
		fmt.Fprintln(w, line)
	}

	var whys []string
	for _, t := range doc.Targets {
		if t.Why != "" {
			whys = append(whys, t.Name+": "+t.Why)
		}
	}
	if len(whys) > 0 {
		fmt.Fprintln(w)
		for _, n := range whys {
			fmt.Fprintln(w, n)
		}
	}

	var notes []string
	if !doc.Ready {
		if len(doc.NotReady) == 0 {
			notes = append(notes, "not ready")
		}
		for _, r := range doc.NotReady {
			notes = append(notes, "not ready: "+r)
		}
	}
	for _, t := range doc.Targets {
		if r := t.LastReport; r != nil && r.Error != "" {
			n := fmt.Sprintf("%s: last run failed: %s", t.Name, r.Error)
			if t.ConsecutiveFailures > 1 {
				n += fmt.Sprintf(" (%d failures in a row)", t.ConsecutiveFailures)
			}
			notes = append(notes, n)
		}
		if t.Stuck {
			notes = append(notes, t.Name+": stuck — compactions keep failing or make no progress")
		}
		for _, wn := range t.Warnings {
			notes = append(notes, fmt.Sprintf("warning: %s: %s", t.Name, wn))
		}
	}
	for _, wn := range doc.Warnings {
		notes = append(notes, "warning: "+wn)
	}
	for _, d := range doc.Disks {
		if !d.UnderPressure && !d.Predicted && !d.NothingReclaimable {
			continue
		}
		n := fmt.Sprintf("disk %s: %.1f%% used", d.Mountpoint, d.UsedPercent)
		switch {
		case d.UnderPressure:
			n += ", under pressure"
		case d.Predicted:
			n += ", predicted to cross the high mark soon"
		}
		if d.NothingReclaimable {
			n += ", nothing left to reclaim"
		}
		if len(d.Targets) > 0 {
			n += " (targets: " + strings.Join(d.Targets, ", ") + ")"
		}
		notes = append(notes, n)
	}
	if doc.NATS != nil && !doc.NATS.Connected {
		notes = append(notes, statusConnNote("NATS", *doc.NATS))
	}
	for _, r := range doc.Redis {
		if !r.Connected {
			notes = append(notes, statusConnNote("Redis", r))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintln(w, n)
		}
	}
}

// statusSnapshotsText is a target's backup snapshots: how many are held
// and the bytes only they still link.
func statusSnapshotsText(t TargetStatus) string {
	if t.SnapshotsHeld == 0 {
		return "-"
	}
	return fmt.Sprintf("%d (pins %s)", t.SnapshotsHeld, statusSizeText(t.SnapshotPinnedBytes))
}

// statusSnapshotsLine sums up the backup snapshots the node holds: how
// many, the bytes they pin, and which expires next and when; "" when it
// holds none.
func statusSnapshotsLine(doc StatusDoc, now time.Time) string {
	ids := map[string]bool{}
	var next *snapshot.Snapshot
	for i, s := range doc.Snapshots {
		ids[s.ID] = true
		if s.ExpiresAt != nil && (next == nil || s.ExpiresAt.Before(*next.ExpiresAt)) {
			next = &doc.Snapshots[i]
		}
	}
	if len(ids) == 0 {
		return ""
	}
	var pinned int64
	for _, t := range doc.Targets {
		pinned += t.SnapshotPinnedBytes
	}
	word := "snapshot"
	if len(ids) > 1 {
		word += "s"
	}
	line := fmt.Sprintf("backup %s: %d held, pinning %s", word, len(ids), statusSizeText(pinned))
	if next != nil {
		if next.ExpiresAt.After(now) {
			line += fmt.Sprintf("; %s expires %s", next.ID, statusAt(*next.ExpiresAt, now, "at"))
		} else {
			line += fmt.Sprintf("; %s expired, removed shortly", next.ID)
		}
	}
	return line
}

func statusConnNote(what string, c ConnStatus) string {
	n := what + " disconnected"
	if c.Addr != "" {
		n += ": " + c.Addr
	}
	if c.Detail != "" {
		n += " (" + c.Detail + ")"
	}
	return n
}

func statusOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func statusSizeText(n int64) string {
	if n < 0 {
		return "?"
	}
	return humanize.IBytes(uint64(n))
}

// statusSignedBytes is humanize.IBytes for a possibly negative count.
func statusSignedBytes(n int64) string {
	if n < 0 {
		return "-" + humanize.IBytes(uint64(-n))
	}
	return humanize.IBytes(uint64(n))
}

func statusLastRunText(t TargetStatus, now time.Time) string {
	r := t.LastReport
	if r == nil || r.StartedAt.IsZero() {
		return "never"
	}
	end := r.StartedAt.Add(time.Duration(r.DurationMS) * time.Millisecond)
	d := now.Sub(end)
	if d < time.Second {
		return "just now"
	}
	return statusRoughDuration(d) + " ago"
}

func statusResultText(t TargetStatus) string {
	r := t.LastReport
	switch {
	case r == nil:
		return "-"
	case r.Error != "":
		if t.ConsecutiveFailures > 1 {
			return fmt.Sprintf("FAILED ×%d", t.ConsecutiveFailures)
		}
		return "FAILED"
	case r.Skipped != "":
		return "skipped"
	case r.DryRun:
		return "dry run"
	}
	return "ok"
}

func statusReclaimedText(t TargetStatus) string {
	r := t.LastReport
	if r == nil || r.Error != "" || r.Skipped != "" {
		return "-"
	}
	b := "?"
	if r.ReclaimedBytes != nil {
		b = statusSignedBytes(*r.ReclaimedBytes)
	}
	return fmt.Sprintf("%s / %s rec", b, humanize.Comma(r.RemovedRecords))
}

func statusStateText(t TargetStatus, now time.Time) string {
	s := strings.ReplaceAll(t.State, "_", " ")
	if t.Compacting {
		s = "running"
	}
	if s == "" {
		s = "-"
	}
	if t.Until != nil && t.Until.After(now) && !t.Compacting {
		s += " " + statusAt(*t.Until, now, "until")
	} else if t.NextDue != nil && !t.Compacting && (t.State == "idle" || t.State == "") {
		if t.NextDue.After(now) {
			s += ", due " + statusAt(*t.NextDue, now, "at")
		} else {
			s += ", due now"
		}
	}
	if t.PendingSignals > 0 {
		s += fmt.Sprintf(" (%d pending)", t.PendingSignals)
	}
	if t.Stuck {
		s += " STUCK"
	}
	return s
}

// statusAt says when at is: "in 12s" within two minutes, else word and
// the local time of now ("until 15:04:05"), with the date beyond a day.
func statusAt(at, now time.Time, word string) string {
	d := at.Sub(now)
	switch {
	case d < 2*time.Minute:
		return "in " + statusRoughDuration(d)
	case d < 24*time.Hour:
		return word + " " + at.In(now.Location()).Format("15:04:05")
	}
	return word + " " + at.In(now.Location()).Format("Jan 2 15:04")
}

func statusWarningsText(ws []string) string {
	switch len(ws) {
	case 0:
		return "-"
	case 1:
		return statusShorten(ws[0], 40)
	}
	return fmt.Sprintf("%d: %s", len(ws), statusShorten(ws[0], 36))
}

// statusShorten cuts s to at most n runes, ending in "…" when cut.
func statusShorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// statusRoughDuration is d to the one or two largest units: "12s", "3m", "2h5m",
// "3d4h".
func statusRoughDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 24*time.Hour:
		h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	}
	days, h := int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour)
	if h == 0 {
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd%dh", days, h)
}

// natsOnlyStatusFlags are the flags of `watcher status` that only asking
// the fleet (--nats) uses.
var natsOnlyStatusFlags = []string{"prefix", "token", "user", "password", "creds", "nkey", "tls-ca", "tls-cert", "tls-key"}
