package triggers

// Fleet discovery: how many watchers answer a request.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Metadata keys of the micro service (see NATS).
const (
	metaNode          = "node"
	metaPrefix        = "prefix"
	metaLocalTargets  = "local_targets"
	metaSharedTargets = "shared_targets"
	metaSharedGroup   = "shared_group"
	metaVersion       = "version"
)

// FleetNode is one watcher that answered $SRV.PING.papyra-watcher.
type FleetNode struct {
	Node    string
	ID      string // the service instance id
	Version string
	// Local are its node-local (file) targets, Shared its shared (redis)
	// targets, answered once per SharedGroup.
	Local, Shared []string
	SharedGroup   string
}

// DiscoverFleet pings the papyra-watcher services and returns those with
// subject prefix prefix, sorted by node. It returns once no new answer has
// come for PingQuiet after the last one, or after wait.
func DiscoverFleet(ctx context.Context, nc *nats.Conn, prefix string, wait time.Duration) ([]FleetNode, error) {
	if prefix == "" {
		prefix = DefaultSubjectPrefix
	}
	subject, err := micro.ControlSubject(micro.PingVerb, ServiceName, "")
	if err != nil {
		return nil, err
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("subscribe to reply inbox: %w", err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		return nil, fmt.Errorf("publish %s: %w", subject, err)
	}
	if err := nc.Flush(); err != nil {
		return nil, fmt.Errorf("publish %s: %w", subject, err)
	}
	deadline := time.Now().Add(wait)
	var nodes []FleetNode
	seen := map[string]bool{}
	quiet := wait
	for {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		step, cancel := context.WithTimeout(ctx, min(left, quiet))
		msg, err := sub.NextMsgWithContext(step)
		cancel()
		if err != nil {
			if errors.Is(err, nats.ErrNoResponders) {
				return nil, nil
			}
			if ctx.Err() != nil {
				return nodes, ctx.Err()
			}
			break // quiet or deadline
		}
		quiet = PingQuiet
		var p micro.Ping
		if json.Unmarshal(msg.Data, &p) != nil || p.Name != ServiceName || seen[p.ID] {
			continue
		}
		md := p.Metadata
		if md[metaPrefix] != prefix {
			continue
		}
		seen[p.ID] = true
		nodes = append(nodes, FleetNode{Node: md[metaNode], ID: p.ID, Version: p.Version,
			Local: splitList(md[metaLocalTargets]), Shared: splitList(md[metaSharedTargets]),
			SharedGroup: md[metaSharedGroup]})
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Node < nodes[j].Node })
	return nodes, nil
}

// PingQuiet is how long DiscoverFleet waits for another answer after the
// last one.
var PingQuiet = 250 * time.Millisecond

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func joinList(ts []Target) string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.Name
	}
	return strings.Join(names, ",")
}

// ExpectedReplies is how many replies a request for targets (none: every
// target) on a shared subject gets from nodes: one per node that has some
// of the requested node-local targets or does not know a requested name
// (it refuses), plus one per queue group with some of the requested shared
// targets. For post-backup and status every node answers once.
func ExpectedReplies(nodes []FleetNode, verb string, targets []string) int {
	if verb == VerbPostBackup || verb == VerbStatus {
		return len(nodes)
	}
	n := 0
	groups := map[string]bool{}
	for _, f := range nodes {
		local, unknown := false, false
		for _, t := range targets {
			switch {
			case slices.Contains(f.Local, t):
				local = true
			case !slices.Contains(f.Shared, t):
				unknown = true
			}
		}
		if len(targets) == 0 {
			local = len(f.Local) > 0
		}
		if local || unknown {
			n++
		}
		if unknown || f.SharedGroup == "" || groups[f.SharedGroup] {
			continue
		}
		if len(targets) == 0 && len(f.Shared) > 0 || slices.ContainsFunc(targets, func(t string) bool { return slices.Contains(f.Shared, t) }) {
			groups[f.SharedGroup] = true
			n++
		}
	}
	return n
}
