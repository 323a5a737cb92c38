package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/papyra/watcher/triggers"
)

// natsClientFlags adds the NATS authentication and TLS flags of a client
// command to fs and returns the function that builds its config.
func natsClientFlags(fs *flag.FlagSet) func(url, prefix string) triggers.NATSConfig {
	token := fs.String("token", os.Getenv("WATCHER_NATS_TOKEN"), "with --nats: NATS token (default $WATCHER_NATS_TOKEN)")
	user := fs.String("user", "", "with --nats: NATS user (password from --password or $WATCHER_NATS_PASSWORD)")
	password := fs.String("password", os.Getenv("WATCHER_NATS_PASSWORD"), "with --nats: NATS password")
	creds := fs.String("creds", "", "with --nats: NATS credentials file")
	nkey := fs.String("nkey", "", "with --nats: NATS nkey seed file")
	tlsCA := fs.String("tls-ca", "", "with --nats: PEM file of the CA of the NATS server's certificate")
	tlsCert := fs.String("tls-cert", "", "with --nats: client certificate PEM file (with --tls-key)")
	tlsKey := fs.String("tls-key", "", "with --nats: client key PEM file")
	return func(url, prefix string) triggers.NATSConfig {
		cfg := triggers.NATSConfig{URL: url, SubjectPrefix: prefix, Node: "status",
			Token: *token, User: *user, Password: *password, CredsFile: *creds, NKeySeedFile: *nkey,
			TLSCA: *tlsCA, TLSCert: *tlsCert, TLSKey: *tlsKey}
		if *user == "" {
			cfg.Password = ""
		}
		return cfg
	}
}

// runFleetStatus is `watcher status --nats URL`: every watcher's /status
// document over NATS (<prefix>.status), as one table of node and target,
// or with asJSON one JSON array of the documents. Exit 1 when no watcher
// answers.
func runFleetStatus(ctx context.Context, cfg triggers.NATSConfig, asJSON bool, timeout time.Duration, stdout, stderr io.Writer) int {
	nc, err := triggers.ConnectNATS(cfg, min(timeout, 10*time.Second))
	if err != nil {
		fmt.Fprintf(stderr, "watcher status: %v\n", err)
		if errors.Is(err, triggers.ErrNATSConfig) {
			return exitBadConfig
		}
		return exitFailure
	}
	defer nc.Close()
	start := time.Now()
	nodes, err := triggers.DiscoverFleet(ctx, nc, cfg.SubjectPrefix, min(timeout/2, 5*time.Second))
	if err != nil {
		fmt.Fprintf(stderr, "watcher status: discover watchers: %v\n", err)
	}
	raw, reqErr := triggers.GatherReplies(ctx, nc, triggers.NATSSubject(cfg.SubjectPrefix, "", triggers.VerbStatus),
		nil, len(nodes), timeout-time.Since(start))
	var docs []StatusDoc
	for _, data := range raw {
		var doc StatusDoc
		if err := json.Unmarshal(data, &doc); err != nil {
			fmt.Fprintf(stderr, "watcher status: an answer is not a status document: %v\n", err)
			continue
		}
		docs = append(docs, doc)
	}
	sort.Slice(docs, func(i, j int) bool { return docs[i].Node < docs[j].Node })
	if reqErr != nil {
		fmt.Fprintf(stderr, "watcher status: %v\n", reqErr)
	}
	if len(docs) == 0 {
		if reqErr == nil {
			fmt.Fprintln(stderr, "watcher status: no watcher answered")
		}
		return exitFailure
	}
	if asJSON {
		out, _ := json.MarshalIndent(docs, "", "  ")
		fmt.Fprintf(stdout, "%s\n", out)
		return exitOK
	}
	renderFleetStatus(stdout, docs, time.Now())
	return exitOK
}

// statusReclaimableText is what the target's last retention estimate says
// a compaction would free: "-" when the retention trigger does not watch
// it or has not estimated it yet, "?" when the estimate failed.
func statusReclaimableText(t TargetStatus) string {
	r := t.Retention
	switch {
	case r == nil:
		return "-"
	case r.EstimatedAt == nil && r.Error != "":
		return "?"
	case r.EstimatedAt == nil:
		return "-"
	}
	return statusSizeText(r.ReclaimableBytes)
}

// renderFleetStatus prints one row per node and target.
func renderFleetStatus(w io.Writer, docs []StatusDoc, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tTARGET\tBACKEND\tSIZE\tRECLAIMABLE\tLAST RUN\tRESULT\tRECLAIMED\tSTATE\tSNAPSHOTS\tWARNINGS")
	for _, doc := range docs {
		node := doc.Node
		if !doc.Ready {
			node += " (not ready)"
		}
		if len(doc.Targets) == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\tno targets\n", node)
		}
		for _, t := range doc.Targets {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
				node, t.Name, statusOrDash(t.Backend), statusSizeText(t.SizeBytes), statusReclaimableText(t),
				statusLastRunText(t, now), statusResultText(t), statusReclaimedText(t), statusStateText(t, now),
				statusSnapshotsText(t), statusWarningsText(t.Warnings))
		}
	}
	tw.Flush()
}
