package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/snapshot"
	"github.com/papyra/watcher/triggers"
)

const requestUsage = `Usage: watcher request pre-backup|pre-migration|compact [flags]
       watcher request pre-backup --snapshot [--snapshot-ttl D] [flags]
       watcher request post-backup --snapshot-id ID [flags]

Sends the NATS request a backup or migration pipeline would send and prints
the replies, one row per node and target. Exit 0 when every reply is ok (and
every expected reply came), 1 otherwise or when no reply came in time, 2 on
bad usage.

Without --expect it asks $SRV.PING.papyra-watcher which watchers there are,
works out how many replies they send (one per node with some of the
requested node-local targets, plus one per group of nodes sharing redis
targets) and returns as soon as all have come, within --timeout. With
--expect N it waits for N replies instead; with --node, for that node's.

pre-backup --snapshot also takes a backup snapshot of every file target
and prints its files with the byte count to read; post-backup --snapshot-id
releases it (exit 1 when no node held it).

Flags:
`

// runRequest is `watcher request VERB [--target NAME]... [--nats URL]
// [--timeout D] [--expect N] [--node NODE] [--dry-run] [--reason TEXT]
// [--json]` plus authentication flags.
func runRequest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("request", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, requestUsage)
		fs.PrintDefaults()
	}
	var targets stringList
	fs.Var(&targets, "target", "a target's config name (repeatable); none means every target")
	url := fs.String("nats", triggers.DefaultNATSURL, "NATS server URL(s), comma-separated")
	prefix := fs.String("prefix", triggers.DefaultSubjectPrefix, "the watchers' nats.subject_prefix")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the replies")
	expect := fs.Int("expect", 0, "number of replies to wait for (0: as many as the watchers that answer $SRV.PING.papyra-watcher send; with --node, that node's one)")
	node := fs.String("node", "", "ask this node only (its node-scoped subject)")
	dryRun := fs.Bool("dry-run", false, "ask for reports without changes")
	reason := fs.String("reason", "", "free text for the watchers' logs and reports")
	asJSON := fs.Bool("json", false, "print the replies as one JSON array")
	snap := fs.Bool("snapshot", false, "pre-backup: also take a backup snapshot of every file target")
	snapTTL := fs.Duration("snapshot-ttl", 0, "pre-backup --snapshot: keep the snapshot this long unless released (0: the watchers' snapshot_ttl)")
	snapID := fs.String("snapshot-id", "", "post-backup: the snapshot id to release")
	token := fs.String("token", os.Getenv("WATCHER_NATS_TOKEN"), "NATS token (default $WATCHER_NATS_TOKEN)")
	user := fs.String("user", "", "NATS user (password from --password or $WATCHER_NATS_PASSWORD)")
	password := fs.String("password", os.Getenv("WATCHER_NATS_PASSWORD"), "NATS password")
	creds := fs.String("creds", "", "NATS credentials file")
	nkey := fs.String("nkey", "", "NATS nkey seed file")
	tlsCA := fs.String("tls-ca", "", "PEM file of the CA of the NATS server's certificate")
	tlsCert := fs.String("tls-cert", "", "client certificate PEM file (with --tls-key)")
	tlsKey := fs.String("tls-key", "", "client key PEM file")

	// The verb may come before or after the flags.
	var verb string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		verb, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitBadConfig
	}
	rest := fs.Args()
	if verb == "" && len(rest) > 0 {
		verb, rest = rest[0], rest[1:]
	}
	switch {
	case verb == "":
		fmt.Fprintln(stderr, "watcher request: missing the request: pre-backup, pre-migration, compact or post-backup")
		return exitBadConfig
	case !triggers.ValidVerb(verb):
		fmt.Fprintf(stderr, "watcher request: unknown request %q: want pre-backup, pre-migration, compact or post-backup\n", verb)
		return exitBadConfig
	case (*snap || *snapTTL != 0) && verb != triggers.VerbPreBackup:
		fmt.Fprintln(stderr, "watcher request: --snapshot and --snapshot-ttl go with pre-backup")
		return exitBadConfig
	case *snapTTL < 0 || *snapTTL > snapshot.MaxTTL:
		fmt.Fprintf(stderr, "watcher request: --snapshot-ttl must be between 0 and %s, got %s\n", snapshot.MaxTTL, *snapTTL)
		return exitBadConfig
	case *snapID != "" && verb != triggers.VerbPostBackup:
		fmt.Fprintln(stderr, "watcher request: --snapshot-id goes with post-backup")
		return exitBadConfig
	case verb == triggers.VerbPostBackup && !snapshot.ValidID(*snapID):
		fmt.Fprintf(stderr, "watcher request: post-backup needs --snapshot-id ID (the id pre-backup --snapshot printed), got %q\n", *snapID)
		return exitBadConfig
	case verb == triggers.VerbPostBackup && (len(targets) > 0 || *dryRun):
		fmt.Fprintln(stderr, "watcher request: post-backup takes no --target or --dry-run")
		return exitBadConfig
	case len(rest) > 0:
		fmt.Fprintf(stderr, "watcher request: unexpected argument %q\n", rest[0])
		return exitBadConfig
	case *timeout <= 0:
		fmt.Fprintf(stderr, "watcher request: --timeout must be positive, got %s\n", *timeout)
		return exitBadConfig
	case *expect < 0:
		fmt.Fprintf(stderr, "watcher request: --expect must be 0 or more, got %d\n", *expect)
		return exitBadConfig
	}
	for _, t := range targets {
		if t == "" || strings.ContainsAny(t, `/\`) || strings.Contains(t, "..") {
			fmt.Fprintf(stderr, "watcher request: --target %q: name a target by its config name, not a path\n", t)
			return exitBadConfig
		}
	}

	cfg := triggers.NATSConfig{URL: *url, SubjectPrefix: *prefix, Node: "request",
		Token: *token, User: *user, Password: *password, CredsFile: *creds, NKeySeedFile: *nkey,
		TLSCA: *tlsCA, TLSCert: *tlsCert, TLSKey: *tlsKey}
	if *user == "" {
		cfg.Password = ""
	}
	connectTimeout := min(*timeout, 10*time.Second)
	nc, err := triggers.ConnectNATS(cfg, connectTimeout)
	if err != nil {
		fmt.Fprintf(stderr, "watcher request: %v\n", err)
		if errors.Is(err, triggers.ErrNATSConfig) {
			return exitBadConfig
		}
		return exitFailure
	}
	defer nc.Close()

	req := triggers.NATSRequest{Targets: targets, Reason: *reason, DryRun: *dryRun, Snapshot: *snap, SnapshotID: *snapID}
	if *snapTTL > 0 {
		req.SnapshotTTL = snapTTL.String()
	}
	body, _ := json.Marshal(req)
	subject := triggers.NATSSubject(*prefix, *node, verb)
	want := *expect
	wait := *timeout
	switch {
	case want > 0:
	case *node != "":
		want = 1
	default:
		// How many replies the fleet sends: ask the services.
		start := time.Now()
		nodes, err := triggers.DiscoverFleet(ctx, nc, *prefix, min(*timeout/2, 5*time.Second))
		if err != nil {
			fmt.Fprintf(stderr, "watcher request: discover watchers: %v\n", err)
		}
		want = triggers.ExpectedReplies(nodes, verb, targets)
		if want > 0 {
			wait = max(*timeout-time.Since(start), time.Millisecond)
		}
	}
	replies, reqErr := triggers.SendRequest(ctx, nc, subject, body, want, wait)

	if *asJSON {
		if replies == nil {
			replies = []triggers.NATSReply{}
		}
		out, _ := json.MarshalIndent(replies, "", "  ")
		fmt.Fprintf(stdout, "%s\n", out)
	} else if len(replies) > 0 && verb == triggers.VerbPostBackup {
		renderSnapshots(stdout, replies)
		for _, r := range replies {
			if !r.OK {
				fmt.Fprintf(stdout, "%s: %s\n", r.Node, oneLine(r.Error))
			}
		}
	} else if len(replies) > 0 {
		renderReplies(stdout, replies)
		renderSnapshots(stdout, replies)
	}

	code := exitOK
	if reqErr != nil {
		fmt.Fprintf(stderr, "watcher request: %v\n", reqErr)
		code = exitFailure
	}
	notOK := 0
	for _, r := range replies {
		if !r.OK {
			notOK++
		}
	}
	if notOK > 0 {
		fmt.Fprintf(stderr, "watcher request: %d of %d replies not ok\n", notOK, len(replies))
		code = exitFailure
	}
	if verb == triggers.VerbPostBackup {
		released := 0
		for _, r := range replies {
			released += len(r.Released)
		}
		if released == 0 && len(replies) > 0 {
			fmt.Fprintf(stderr, "watcher request: no watcher held snapshot %s (released or expired already?)\n", *snapID)
			code = exitFailure
		}
		return code
	}
	if len(replies) > 0 {
		if missing := unanswered(targets, replies); len(missing) > 0 {
			fmt.Fprintf(stderr, "watcher request: no reply reported on %s\n", strings.Join(missing, ", "))
			code = exitFailure
		}
	}
	return code
}

// unanswered returns the requested targets that no reply has a report for.
func unanswered(targets []string, replies []triggers.NATSReply) []string {
	seen := map[string]bool{}
	for _, r := range replies {
		for _, rep := range r.Reports {
			seen[rep.Target] = true
		}
	}
	var out []string
	for _, t := range targets {
		if !seen[t] {
			out = append(out, t)
			seen[t] = true
		}
	}
	return out
}

// renderReplies prints one row per node and target, then the reply errors
// and the anomalies.
func renderReplies(w io.Writer, replies []triggers.NATSReply) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tTARGET\tRESULT\tREMOVED\tRECLAIMED\tDURATION\tNOTE")
	for _, r := range replies {
		node := r.Node
		if node == "" {
			node = "?"
		}
		if len(r.Reports) == 0 {
			result, note := "ok", "nothing to do"
			if !r.OK {
				result, note = "error", r.Error
			}
			fmt.Fprintf(tw, "%s\t-\t%s\t-\t-\t-\t%s\n", node, result, oneLine(note))
			continue
		}
		for _, rep := range r.Reports {
			result, note := "ok", ""
			switch {
			case rep.Error != "":
				result, note = "error", rep.Error
			case rep.Skipped != "":
				result, note = "skipped", rep.Skipped
			case len(rep.Anomalies) > 0:
				note = fmt.Sprintf("%d anomalies", len(rep.Anomalies))
			}
			if rep.DryRun {
				note = strings.TrimSpace("dry run " + note)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", node, rep.Target, result,
				rep.RemovedRecords, reclaimed(rep.ReclaimedBytes),
				(time.Duration(rep.DurationMS) * time.Millisecond).String(), oneLine(note))
		}
	}
	tw.Flush()
	for _, r := range replies {
		if len(r.Reports) > 0 && !r.OK && r.Error != "" {
			fmt.Fprintf(w, "%s: %s\n", r.Node, oneLine(r.Error))
		}
	}
	var anomalies []backends.Anomaly
	omitted := 0
	for _, r := range replies {
		anomalies = append(anomalies, r.Anomalies...)
		omitted += r.AnomaliesOmitted
	}
	if len(anomalies) > 0 {
		fmt.Fprintln(w, "\nANOMALIES")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TARGET\tTYPE\tPATH\tDETAIL")
		for _, a := range anomalies {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.Target, a.Type, a.Path, oneLine(a.Detail))
		}
		tw.Flush()
	}
	if omitted > 0 {
		fmt.Fprintf(w, "(%d more anomalies left out of the replies)\n", omitted)
	}
}

// renderSnapshots prints the backup snapshots of pre-backup --snapshot
// (one row per file, oldest first, with the byte count to read) and the
// releases of post-backup.
func renderSnapshots(w io.Writer, replies []triggers.NATSReply) {
	var rows [][]string
	for _, r := range replies {
		for _, s := range r.Snapshots {
			switch {
			case s.Error != "":
				rows = append(rows, []string{r.Node, s.Target, "-", "error: " + oneLine(s.Error), "-", "-"})
			case s.Skipped != "":
				rows = append(rows, []string{r.Node, s.Target, "-", "skipped: " + oneLine(s.Skipped), "-", "-"})
			case len(s.Files) == 0:
				rows = append(rows, []string{r.Node, s.Target, s.ID, "(no files)", "0", expiry(s)})
			}
			for _, f := range s.Files {
				rows = append(rows, []string{r.Node, s.Target, s.ID, f.Path, fmt.Sprint(f.Bytes), expiry(s)})
			}
		}
	}
	if len(rows) > 0 {
		fmt.Fprintln(w, "\nSNAPSHOTS (read BYTES bytes of each FILE, in this order; release with post-backup --snapshot-id ID)")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tTARGET\tID\tFILE\tBYTES\tEXPIRES")
		for _, r := range rows {
			fmt.Fprintln(tw, strings.Join(r, "\t"))
		}
		tw.Flush()
	}
	for _, r := range replies {
		for _, id := range r.Released {
			fmt.Fprintf(w, "%s: released snapshot %s\n", r.Node, id)
		}
	}
}

func expiry(s snapshot.Snapshot) string {
	if s.ExpiresAt == nil {
		return "-"
	}
	return s.ExpiresAt.Format(time.RFC3339)
}

func reclaimed(v *int64) string {
	switch {
	case v == nil:
		return "-"
	case *v < 0:
		return "-" + humanize.IBytes(uint64(-*v))
	default:
		return humanize.IBytes(uint64(*v))
	}
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
