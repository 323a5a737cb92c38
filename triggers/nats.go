package triggers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/snapshot"
)

// NATS is the request/reply trigger of backup and migration pipelines, and
// the publisher of compaction events. It implements Source.
//
// # Subjects
//
// Under the prefix P: requests on P.pre-backup, P.pre-migration, P.compact
// (shared subjects, for the whole fleet) and P.node.<node>.<verb> (this node
// only); events on P.events.<target>.
//
// # Fleets
//
// File targets (json, rotating, memory) are node-local; a redis target may
// be shared by several replicas. On each shared subject a node has a plain
// subscription, which every node receives, answering for its node-local
// targets, and — when it has redis targets — a queue subscription, of which
// one member receives each request, answering for the redis targets. The
// queue group is SharedQueueGroup plus a hash of the node's redis targets
// (names and URLs), so nodes configured alike share one group and exactly
// one of them answers, while a node with other redis targets is in another
// group and answers for its own. One request on a shared subject thus gets
// one reply per node that has some of the requested node-local targets plus
// one reply per group for the redis targets. On the node-scoped subject one
// subscription answers for all of that node's targets.
//
// A handler with nothing to answer for stays silent.
//
// # Micro service
//
// The subscriptions are the endpoints of the NATS micro service
// ServiceName ("papyra-watcher", version ServiceVersion(NATSConfig.Version),
// metadata "node", "prefix", "version" — NATSConfig.Version as it is — and
// the targets), so $SRV.PING, $SRV.INFO and $SRV.STATS answer and a client can
// count the nodes. Endpoint names: the verb for the shared subject without
// queue group (node-local targets), "shared-<verb>" for the queue-grouped
// one (redis targets), "node-<verb>" for the node-scoped subject. Besides
// the compacting verbs there are post-backup (release a snapshot) and
// status (this node's /status document, from SetStatus), on the shared
// subject without queue group and on the node-scoped subject.
//
// An endpoint's handler returns once its request is answered, so that
// $SRV.STATS counts each request when it is done (num_requests), with the
// time it took (processing_time), and counts in num_errors every reply
// with ok:false — a refusal as well as a compaction or snapshot that
// failed — which also carries micro's error headers (Nats-Service-Error).
// micro runs one endpoint's handler for one request at a time: requests on
// one subject are answered by each node in turn, while requests on other
// subjects (another verb, the node-scoped subject, the queue-grouped one)
// run concurrently, within MaxRequests.
//
// # Unknown targets
//
// A node refuses as a whole a request that names a target it does not have
// (in any class): its node-local handler replies ok:false "unknown target
// NAME (not configured on node N)" with unknown_targets set, on shared and
// node-scoped subjects alike, and compacts nothing; its shared (queue)
// handler stays silent and compacts nothing. So, in a fleet configured
// alike, a typo gets a fast ok:false reply from every node and nothing is
// compacted. A fleet whose nodes have different targets should address a
// node by its node-scoped subject, or name no targets (each node then
// answers for all of its own). Malformed requests (too big, not JSON,
// unknown fields, a name that looks like a path) are refused the same way:
// an ok:false reply from each node's node-local handler, silence from the
// queue handler, nothing compacted.
//
// Refusals are logged at WARN, at most one line per kind (invalid request,
// unknown target, node busy, reply not sent) every 10s; the line at the end
// of such an interval counts the refusals it stands for.
type NATS struct {
	cfg      NATSConfig
	logger   *slog.Logger
	refusals *logLimiter // the WARN lines of refused requests and unsent replies
	state    *connState
	opts     []nats.Option
	sem      chan struct{}

	mu      sync.RWMutex
	local   []Target // node-local targets, config order
	shared  []Target // shared (redis) targets, config order
	nc      *nats.Conn
	queue   string // current queue group; "" when no shared targets
	started bool   // Run was called
	running bool   // Run is serving

	svc      micro.Service
	snapper  Snapshotter
	statusFn func(context.Context) any

	events chan backends.Report
	wg     sync.WaitGroup
	stop   context.Context // Run's ctx, for subscriptions made later
	emitFn Emit            // Run's emit, likewise
	ready  chan struct{}   // closed once Run has subscribed
}

// NewNATS checks cfg (subjects, auth and TLS files) and returns the NATS
// trigger for targets. It does not connect: Run does.
func NewNATS(cfg NATSConfig, targets []Target, logger *slog.Logger) (*NATS, error) {
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("trigger", "nats")
	st := newConnState(logger)
	opts, err := natsOptions(cfg, st)
	if err != nil {
		return nil, err
	}
	n := &NATS{
		cfg:      cfg,
		logger:   logger,
		refusals: newLogLimiter(logger, natsRefusalLogEvery),
		state:    st,
		opts:     opts,
		sem:      make(chan struct{}, cfg.MaxRequests),
		events:   make(chan backends.Report, 256),
		ready:    make(chan struct{}),
	}
	n.setTargets(targets)
	return n, nil
}

// natsRefusalLogEvery is the least time between two WARN lines of one kind
// of refusal (invalid request, unknown target, node busy, reply not sent):
// a flood of bad requests logs one line per kind per interval, with the
// count of the others.
const natsRefusalLogEvery = 10 * time.Second

// Snapshotter takes and releases backup snapshots of file targets.
type Snapshotter interface {
	// Take snapshots t under id for ttl (0: the default).
	Take(ctx context.Context, id string, t Target, ttl time.Duration) (snapshot.Snapshot, error)
	// Release removes the snapshots with id and returns their targets;
	// snapshot.ErrNotFound when this node holds none.
	Release(id string) ([]string, error)
}

// SetSnapshotter sets what takes backup snapshots (pre-backup with
// "snapshot": true). Without one such requests fail.
func (n *NATS) SetSnapshotter(s Snapshotter) {
	n.mu.Lock()
	n.snapper = s
	n.mu.Unlock()
}

// SetStatus sets the function whose result, as JSON, answers the status
// endpoint.
func (n *NATS) SetStatus(f func(context.Context) any) {
	n.mu.Lock()
	n.statusFn = f
	n.mu.Unlock()
}

// Ready returns a channel closed once Run has subscribed (and, when the
// server was reachable, the server has acknowledged the subscriptions).
func (n *NATS) Ready() <-chan struct{} { return n.ready }

// Node returns this node's name.
func (n *NATS) Node() string { return n.cfg.Node }

// isShared reports whether t may be shared by several nodes.
func isShared(t Target) bool { return t.Backend == backends.KindRedis }

func (n *NATS) setTargets(targets []Target) {
	var local, shared []Target
	for _, t := range targets {
		if isShared(t) {
			shared = append(shared, t)
		} else {
			local = append(local, t)
		}
	}
	n.mu.Lock()
	n.local, n.shared = local, shared
	n.mu.Unlock()
}

// queueGroup names the queue group of a set of shared targets: nodes with
// the same redis targets share it.
func queueGroup(shared []Target) string {
	if len(shared) == 0 {
		return ""
	}
	keys := make([]string, len(shared))
	for i, t := range shared {
		keys[i] = t.Name + "\x00" + t.RedisURL
	}
	sort.Strings(keys)
	sum := sha256.Sum256([]byte(strings.Join(keys, "\x01")))
	return SharedQueueGroup + "." + hex.EncodeToString(sum[:6])
}

// SetTargets replaces the targets (config reload). The queue subscriptions
// follow the new set of shared targets.
func (n *NATS) SetTargets(targets []Target) {
	n.setTargets(targets)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running {
		if err := n.subscribeSharedLocked(); err != nil {
			n.logger.Error("nats: resubscribe shared targets", "err", err)
		}
	}
}

// Observe does nothing: replies travel through Signal.Reply and events
// through Publish.
func (n *NATS) Observe(backends.Report) {}

// State reports whether the connection is up and describes it, for
// readiness and status.
func (n *NATS) State() (connected bool, detail string) {
	c, d, _ := n.state.get()
	return c, d
}

// Watch returns whether the connection is up and a channel closed at the
// next change of state, so that a caller can follow the state as it
// changes (the nats_connected gauge) instead of sampling it.
func (n *NATS) Watch() (connected bool, changed <-chan struct{}) {
	c, _, ch := n.state.get()
	return c, ch
}

// Publish sends r as an event on <prefix>.events.<target>. It never blocks:
// when NATS is not connected, or the queue of events is full, the event is
// dropped with a debug log.
func (n *NATS) Publish(r backends.Report) {
	n.mu.RLock()
	nc, running := n.nc, n.running
	n.mu.RUnlock()
	if !running || nc == nil || !nc.IsConnected() {
		n.logger.Debug("nats event dropped: not connected", "target", r.Target)
		return
	}
	select {
	case n.events <- r:
	default:
		n.logger.Debug("nats event dropped: queue full", "target", r.Target)
	}
}

// Run connects (retrying in the background when the server is down: a
// disconnected NATS stops nothing else), subscribes, and serves requests
// until ctx is done. It returns nil then, once the requests in progress
// have replied.
func (n *NATS) Run(ctx context.Context, emit Emit) error {
	n.mu.Lock()
	started := n.started
	n.started = true
	n.mu.Unlock()
	if started {
		return errors.New("nats trigger: Run called twice")
	}
	// Connect without the lock: a first attempt on an unreachable host
	// takes a dial timeout, and Publish must not wait for it.
	nc, err := nats.Connect(strings.Join(n.cfg.urls(), ","), n.opts...)
	if err != nil {
		return fmt.Errorf("nats trigger: connect to %s: %w", n.cfg.redactedURLs(), err)
	}
	n.mu.Lock()
	n.nc, n.running, n.stop = nc, true, ctx
	n.emitFn = emit
	err = n.startServiceLocked()
	if err != nil {
		n.running = false
		n.mu.Unlock()
		nc.Close()
		return err
	}
	n.mu.Unlock()
	if nc.IsConnected() {
		// Make sure the server knows the subscriptions before saying ready.
		_ = nc.FlushTimeout(5 * time.Second)
	}
	close(n.ready)
	n.logger.Info("nats trigger started", "servers", n.cfg.redactedURLs(), "prefix", n.cfg.SubjectPrefix, "node", n.cfg.Node)

	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		n.publishEvents(ctx, nc)
	}()

	<-ctx.Done()
	n.mu.Lock()
	n.running = false
	if n.svc != nil {
		_ = n.svc.Stop()
		n.svc = nil
	}
	n.queue = ""
	n.mu.Unlock()
	<-pubDone
	n.wg.Wait() // requests in progress reply "stopped" at once (ctx is done)
	n.refusals.Flush()
	n.state.mu.Lock()
	n.state.closing = true
	n.state.mu.Unlock()
	if nc.IsConnected() {
		_ = nc.FlushTimeout(time.Second)
	}
	nc.Close()
	// The closed handler runs asynchronously; State must not say connected
	// once Run has returned.
	n.state.set(false, "closed")
	return nil
}

// subscribeSharedLocked makes the endpoints and the service metadata
// match the current targets: the service is registered again (micro
// cannot remove one endpoint). n.mu is held.
func (n *NATS) subscribeSharedLocked() error {
	return n.startServiceLocked() // the metadata lists the targets
}

// startServiceLocked (re)registers the micro service with every endpoint.
// n.mu is held.
func (n *NATS) startServiceLocked() error {
	if n.svc != nil {
		_ = n.svc.Stop()
		n.svc, n.queue = nil, ""
	}
	ctx, emit := n.stop, n.emitFn
	svc, err := micro.AddService(n.nc, micro.Config{
		Name:        ServiceName,
		Version:     ServiceVersion(n.cfg.Version),
		Description: "Papyra storage compaction watcher",
		Metadata: map[string]string{metaNode: n.cfg.Node, metaPrefix: n.cfg.SubjectPrefix, metaVersion: n.cfg.Version,
			metaLocalTargets: joinList(n.local), metaSharedTargets: joinList(n.shared), metaSharedGroup: queueGroup(n.shared)},
		QueueGroupDisabled: true,
	})
	if err != nil {
		return fmt.Errorf("nats trigger: register service %s: %w", ServiceName, err)
	}
	add := func(name, subject string, sc scope, opts ...micro.EndpointOpt) error {
		h := micro.HandlerFunc(func(r micro.Request) {
			n.dispatch(ctx, emit, inMsg{subject: r.Subject(), reply: r.Reply(), data: r.Data(), req: r}, sc)
		})
		opts = append(opts, micro.WithEndpointSubject(subject), micro.WithEndpointMetadata(map[string]string{"scope": sc.String()}))
		if err := svc.AddEndpoint(name, h, opts...); err != nil {
			return fmt.Errorf("nats trigger: subscribe %s: %w", subject, err)
		}
		return nil
	}
	group := queueGroup(n.shared)
	for _, verb := range serviceVerbs {
		err = add(verb, NATSSubject(n.cfg.SubjectPrefix, "", verb), scopeLocal, micro.WithEndpointQueueGroupDisabled())
		if err == nil {
			err = add("node-"+verb, NATSSubject(n.cfg.SubjectPrefix, n.cfg.Node, verb), scopeNode, micro.WithEndpointQueueGroupDisabled())
		}
		if err == nil && group != "" && slices.Contains(verbs, verb) {
			err = add("shared-"+verb, NATSSubject(n.cfg.SubjectPrefix, "", verb), scopeShared, micro.WithEndpointQueueGroup(group))
		}
		if err != nil {
			_ = svc.Stop()
			return err
		}
	}
	n.svc, n.queue = svc, group
	return nil
}

// semverRe is semantic versioning 2.0.0 (MAJOR.MINOR.PATCH[-pre][+build]),
// what micro requires of a service version.
var semverRe = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)` +
	`(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?` +
	`(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

// DevServiceVersion is the micro service version of a watcher whose version
// is not a semantic version (a development build, "dev"): the service
// metadata "version" carries the watcher's version as it is.
const DevServiceVersion = "0.0.0-dev"

// ServiceVersion is the micro service version announced for the watcher
// version v: v without its leading "v" when that is a semantic version
// ("v1.2.3" → "1.2.3"), DevServiceVersion otherwise.
func ServiceVersion(v string) string {
	if s := strings.TrimPrefix(v, "v"); semverRe.MatchString(s) {
		return s
	}
	return DevServiceVersion
}

// inMsg is one request as an endpoint received it.
type inMsg struct {
	subject string
	reply   string
	data    []byte
	req     micro.Request // answers; micro counts it when the handler returns
}

func (n *NATS) publishEvents(ctx context.Context, nc *nats.Conn) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-n.events:
			if r.Node == "" {
				r.Node = n.cfg.Node
			}
			data, err := json.Marshal(r)
			if err != nil {
				n.logger.Debug("nats event dropped: encode", "target", r.Target, "err", err)
				continue
			}
			if err := nc.Publish(NATSEventSubject(n.cfg.SubjectPrefix, r.Target), data); err != nil {
				n.logger.Debug("nats event dropped", "target", r.Target, "err", err)
			}
		}
	}
}

// scope is which targets a subscription answers for.
type scope int

const (
	scopeLocal  scope = iota // shared subject, plain subscription: node-local targets
	scopeShared              // shared subject, queue subscription: shared targets
	scopeNode                // node-scoped subject: every target of the node
)

func (s scope) String() string {
	return [...]string{"local", "shared", "node"}[s]
}

// verbOf returns the last token of subject.
func verbOf(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

// dispatch is an endpoint's handler: it runs on the endpoint's NATS
// goroutine and returns once the request is answered, so that micro counts
// the request, its processing time and, for a reply with ok:false, an
// error. It answers refusals at once; a request it accepts takes one of
// MaxRequests slots while it waits for its reports.
func (n *NATS) dispatch(ctx context.Context, emit Emit, m inMsg, sc scope) {
	verb := verbOf(m.subject)
	switch verb {
	case VerbStatus:
		n.answerStatus(ctx, m)
		return
	case VerbPostBackup:
		n.answerPostBackup(m)
		return
	}
	req, targets, refusal := n.prepare(m.data, sc)
	if refusal == nil && (req.SnapshotID != "" || ((req.Snapshot || req.SnapshotTTL != "") && verb != VerbPreBackup)) {
		refusal = &NATSReply{Error: "invalid request body: snapshot and snapshot_ttl are for pre-backup, snapshot_id for post-backup; nothing compacted"}
	}
	if refusal != nil {
		reason := "invalid request"
		if len(refusal.UnknownTargets) > 0 {
			reason = "unknown target"
		}
		n.refusals.Log(slog.LevelWarn, reason, "nats request refused",
			"reason", reason, "subject", m.subject, "scope", sc.String(), "err", refusal.Error)
		if sc != scopeShared {
			refusal.Request = verb
			n.respond(m, *refusal)
		}
		return
	}
	if len(targets) == 0 && sc != scopeNode {
		return // nothing to answer for here
	}
	select {
	case n.sem <- struct{}{}:
	default:
		n.refusals.Log(slog.LevelWarn, "busy", "nats request refused: too many in progress",
			"reason", "busy", "subject", m.subject, "scope", sc.String(), "limit", n.cfg.MaxRequests)
		n.respond(m, NATSReply{Request: verb, Error: fmt.Sprintf("node busy: %d requests in progress; nothing compacted, try again later", n.cfg.MaxRequests)})
		return
	}
	n.mu.RLock()
	running := n.running
	if running {
		n.wg.Add(1)
	}
	n.mu.RUnlock()
	if !running {
		<-n.sem
		return
	}
	defer n.wg.Done()
	defer func() { <-n.sem }()
	n.handle(ctx, emit, m, verb, req, targets, n.logger.With("subject", m.subject, "scope", sc.String()))
}

// prepare parses a request and selects the targets sc answers for. A
// non-nil refusal is the reply to send (or, for the shared scope, the
// reason to stay silent).
func (n *NATS) prepare(data []byte, sc scope) (NATSRequest, []Target, *NATSReply) {
	req, err := parseRequest(data, n.cfg.MaxBodyBytes)
	if err != nil {
		return req, nil, &NATSReply{Error: err.Error() + "; nothing compacted"}
	}
	targets, unknown := n.selection(req.Targets, sc)
	if len(unknown) > 0 {
		quoted := make([]string, len(unknown))
		for i, u := range unknown {
			quoted[i] = fmt.Sprintf("%q", u)
		}
		word := "target"
		if len(unknown) > 1 {
			word = "targets"
		}
		return req, nil, &NATSReply{
			Error:          fmt.Sprintf("unknown %s %s (not configured on node %s); nothing compacted", word, strings.Join(quoted, ", "), n.cfg.Node),
			UnknownTargets: unknown,
		}
	}
	return req, targets, nil
}

// parseRequest decodes and checks a request body.
func parseRequest(data []byte, max int) (NATSRequest, error) {
	var req NATSRequest
	if len(data) > max {
		return req, fmt.Errorf("request body is %d bytes, more than the limit of %d", len(data), max)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return req, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("invalid request body: %w (want JSON {\"targets\": [...], \"reason\": \"...\", \"dry_run\": false})", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return req, errors.New("invalid request body: data after the JSON object")
	}
	if req.SnapshotTTL != "" {
		d, err := time.ParseDuration(req.SnapshotTTL)
		if err != nil || d <= 0 || d > snapshot.MaxTTL {
			return req, fmt.Errorf("invalid snapshot_ttl %q: want a duration such as \"1h\", at most %s", req.SnapshotTTL, snapshot.MaxTTL)
		}
	}
	seen := map[string]bool{}
	names := req.Targets[:0:0]
	for _, name := range req.Targets {
		if err := checkTargetName(name); err != nil {
			return req, err
		}
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	req.Targets = names
	return req, nil
}

// checkTargetName refuses names that cannot be config names: targets are
// requested by name, never by path.
func checkTargetName(name string) error {
	if name == "" {
		return errors.New("invalid request body: empty target name")
	}
	if strings.ContainsAny(name, `/\`) || strings.Contains(name, "..") {
		return fmt.Errorf("unknown target %q: targets are named by their config name, never by a path", name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("unknown target %q: control character in name", name)
		}
	}
	return nil
}

// selection returns, for one request, the targets this handler answers for
// and the requested names this node does not have at all.
func (n *NATS) selection(names []string, sc scope) (sel []Target, unknown []string) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	var pool []Target
	switch sc {
	case scopeLocal:
		pool = n.local
	case scopeShared:
		pool = n.shared
	default:
		pool = append(append([]Target(nil), n.local...), n.shared...)
	}
	if len(names) == 0 {
		return slices.Clone(pool), nil
	}
	byName := map[string]Target{}
	for _, t := range pool {
		byName[t.Name] = t
	}
	known := map[string]bool{}
	for _, t := range n.local {
		known[t.Name] = true
	}
	for _, t := range n.shared {
		known[t.Name] = true
	}
	for _, name := range names {
		if t, ok := byName[name]; ok {
			sel = append(sel, t)
		} else if !known[name] {
			unknown = append(unknown, name)
		}
	}
	return sel, unknown
}

// handle emits the signal of one request, waits for its reports and
// replies.
func (n *NATS) handle(ctx context.Context, emit Emit, m inMsg, verb string, req NATSRequest, targets []Target, log *slog.Logger) {
	reply := NATSReply{Node: n.cfg.Node, Request: verb}
	reason := "nats " + verb
	if req.Reason != "" {
		reason += ": " + req.Reason
	}
	col := newCollector(targets, req.DryRun)
	if len(targets) > 0 {
		names := make([]string, len(targets))
		for i, t := range targets {
			names[i] = t.Name
		}
		log.Info("nats request", "targets", names, "dry_run", req.DryRun, "reason", req.Reason)
		emit(policy.Signal{
			Kind:    policy.KindNATS,
			Targets: names,
			Urgent:  true,
			Reason:  reason,
			At:      time.Now(),
			DryRun:  req.DryRun,
			Scan:    verb == VerbPreMigration,
			Reply:   col.add,
		})
		timer := time.NewTimer(n.cfg.RequestTimeout)
		select {
		case <-col.done:
		case <-timer.C:
			col.fail(fmt.Sprintf("no report within %s (request timeout): the compaction did not finish in time", n.cfg.RequestTimeout))
		case <-ctx.Done():
			col.fail("the watcher stopped before the compaction finished")
		}
		timer.Stop()
	}
	reply.Reports = col.reports(n.cfg.Node)
	reply.Anomalies = []backends.Anomaly{}
	failed := 0
	for _, r := range reply.Reports {
		if r.Error != "" {
			failed++
		}
		reply.Anomalies = append(reply.Anomalies, r.Anomalies...)
	}
	var problems []string
	if failed > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d targets failed", failed, len(reply.Reports)))
	}
	if verb == VerbPreMigration && len(reply.Anomalies) > 0 {
		problems = append(problems, fmt.Sprintf("%d anomalies remain", len(reply.Anomalies)))
	}
	if verb == VerbPreBackup && req.Snapshot {
		reply.Snapshots = n.takeSnapshots(ctx, targets, reply.Reports, req, log)
		bad := 0
		for _, s := range reply.Snapshots {
			if s.Error != "" {
				bad++
			}
		}
		if bad > 0 {
			problems = append(problems, fmt.Sprintf("%d of %d snapshots failed", bad, len(reply.Snapshots)))
		}
	}
	reply.OK = len(problems) == 0
	reply.Error = strings.Join(problems, "; ")
	log.Info("nats reply", "ok", reply.OK, "reports", len(reply.Reports), "anomalies", len(reply.Anomalies), "error", reply.Error)
	n.respond(m, reply)
}

// respond sends reply to m's reply subject, trimmed to fit the server's
// payload limit, through micro: one with ok:false as a micro error
// (counted in num_errors, with the Nats-Service-Error headers).
func (n *NATS) respond(m inMsg, reply NATSReply) {
	if m.reply == "" || m.req == nil {
		return // published without a reply subject: nobody to answer
	}
	if reply.Node == "" {
		reply.Node = n.cfg.Node
	}
	if reply.Reports == nil {
		reply.Reports = []backends.Report{}
	}
	if reply.Anomalies == nil {
		reply.Anomalies = []backends.Anomaly{}
	}
	n.mu.RLock()
	nc := n.nc
	n.mu.RUnlock()
	if nc == nil {
		return
	}
	data := fitReply(reply, int(nc.MaxPayload()))
	var err error
	switch {
	case reply.OK:
		err = m.req.Respond(data)
	default:
		err = m.req.Error("500", errorHeader(reply.Error), data)
	}
	if err != nil {
		n.refusals.Log(slog.LevelWarn, "reply not sent", "nats reply not sent", "subject", m.subject, "err", err)
	}
}

// errorHeader is an error text fit for a header: one line, bounded, never
// empty.
func errorHeader(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > 512 {
		s = s[:512]
	}
	if s == "" {
		s = "failed"
	}
	return s
}

// answerStatus replies with this node's status document.
func (n *NATS) answerStatus(ctx context.Context, m inMsg) {
	n.mu.RLock()
	f := n.statusFn
	n.mu.RUnlock()
	var doc any = map[string]string{"node": n.cfg.Node, "error": "status not available"}
	if f != nil {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		doc = f(sctx)
		cancel()
	}
	data, err := json.Marshal(doc)
	if err != nil {
		data, _ = json.Marshal(map[string]string{"node": n.cfg.Node, "error": err.Error()})
	}
	if m.reply == "" || m.req == nil {
		return
	}
	if err := m.req.Respond(data); err != nil {
		n.refusals.Log(slog.LevelWarn, "reply not sent", "nats reply not sent", "subject", m.subject, "err", err)
	}
}

// answerPostBackup releases the snapshot a post-backup names. A node that
// does not hold it replies ok with nothing released.
func (n *NATS) answerPostBackup(m inMsg) {
	reply := NATSReply{Request: VerbPostBackup}
	req, err := parseRequest(m.data, n.cfg.MaxBodyBytes)
	switch {
	case err != nil:
		reply.Error = err.Error()
	case req.SnapshotID == "":
		reply.Error = `invalid request body: post-backup needs {"snapshot_id": "..."}`
	case !snapshot.ValidID(req.SnapshotID):
		reply.Error = fmt.Sprintf("invalid snapshot_id %q", req.SnapshotID)
	case len(req.Targets) > 0 || req.Snapshot || req.SnapshotTTL != "" || req.DryRun:
		reply.Error = "invalid request body: post-backup takes only snapshot_id (and reason)"
	}
	if reply.Error != "" {
		n.refusals.Log(slog.LevelWarn, "invalid request", "nats request refused", "reason", "invalid request", "subject", m.subject, "err", reply.Error)
		n.respond(m, reply)
		return
	}
	n.mu.RLock()
	sn := n.snapper
	n.mu.RUnlock()
	reply.Released = []string{}
	if sn != nil {
		targets, err := sn.Release(req.SnapshotID)
		switch {
		case errors.Is(err, snapshot.ErrNotFound):
		case err != nil:
			reply.Error = "release snapshot " + req.SnapshotID + ": " + err.Error()
		default:
			reply.Released = append(reply.Released, req.SnapshotID)
			n.logger.Info("nats post-backup: snapshot released", "id", req.SnapshotID, "targets", targets)
		}
	}
	reply.OK = reply.Error == ""
	n.respond(m, reply)
}

// takeSnapshots takes the backup snapshots of a pre-backup: one id for all
// of this node's targets; a target whose compaction failed gets none.
func (n *NATS) takeSnapshots(ctx context.Context, targets []Target, reports []backends.Report, req NATSRequest, log *slog.Logger) []snapshot.Snapshot {
	n.mu.RLock()
	sn := n.snapper
	n.mu.RUnlock()
	var ttl time.Duration
	if req.SnapshotTTL != "" {
		ttl, _ = time.ParseDuration(req.SnapshotTTL) // checked by parseRequest
	}
	failed := map[string]string{}
	for _, r := range reports {
		if r.Error != "" {
			failed[r.Target] = r.Error
		}
	}
	id := snapshot.NewID(time.Now())
	out := make([]snapshot.Snapshot, 0, len(targets))
	tctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	defer cancel()
	for _, t := range targets {
		switch {
		case t.Backend == backends.KindRedis:
			out = append(out, snapshot.Snapshot{Target: t.Name, Skipped: "snapshots are not supported for redis targets: back Redis up with its own RDB snapshot"})
		case t.Backend != backends.KindJSON && t.Backend != backends.KindRotating:
			out = append(out, snapshot.Snapshot{Target: t.Name, Skipped: "snapshots are for file targets (json, rotating) only"})
		case failed[t.Name] != "":
			out = append(out, snapshot.Snapshot{Target: t.Name, Error: "no snapshot: the compaction failed"})
		case sn == nil:
			out = append(out, snapshot.Snapshot{Target: t.Name, Error: "snapshots are not available on this node"})
		default:
			s, err := sn.Take(tctx, id, t, ttl)
			if err != nil {
				s = snapshot.Snapshot{Target: t.Name, Error: err.Error()}
				log.Warn("backup snapshot failed", "target", t.Name, "err", err)
			}
			out = append(out, s)
		}
	}
	return out
}

// fitReply encodes reply, dropping per-report anomaly copies and then the
// tail of the anomaly list while it exceeds max bytes.
func fitReply(reply NATSReply, max int) []byte {
	data, _ := json.Marshal(reply)
	if max <= 0 || len(data) <= max {
		return data
	}
	reports := make([]backends.Report, len(reply.Reports))
	for i, r := range reply.Reports {
		r.Anomalies = nil
		reports[i] = r
	}
	reply.Reports = reports
	all := reply.Anomalies
	keep := len(all)
	for {
		reply.Anomalies = all[:keep]
		reply.AnomaliesOmitted = len(all) - keep
		data, _ = json.Marshal(reply)
		if len(data) <= max || keep == 0 {
			return data
		}
		keep /= 2
	}
}

// collector gathers the reports of one request's signal.
type collector struct {
	targets []Target
	dryRun  bool
	done    chan struct{}

	mu  sync.Mutex
	got map[string]backends.Report
}

func newCollector(targets []Target, dryRun bool) *collector {
	c := &collector{targets: targets, dryRun: dryRun, done: make(chan struct{}), got: map[string]backends.Report{}}
	if len(targets) == 0 {
		close(c.done)
	}
	return c
}

// add is the Signal's Reply: it keeps the first report of each requested
// target and never blocks.
func (c *collector) add(r backends.Report) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.got[r.Target]; dup || len(c.got) == len(c.targets) {
		return
	}
	if !slices.ContainsFunc(c.targets, func(t Target) bool { return t.Name == r.Target }) {
		return
	}
	c.got[r.Target] = r
	if len(c.got) == len(c.targets) {
		close(c.done)
	}
}

// fail fills the missing reports with errors.
func (c *collector) fail(msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.got) == len(c.targets) {
		return
	}
	for _, t := range c.targets {
		if _, ok := c.got[t.Name]; !ok {
			c.got[t.Name] = backends.Report{Target: t.Name, Backend: t.Backend, Trigger: policy.KindNATS, DryRun: c.dryRun, Error: msg}
		}
	}
	close(c.done)
}

// reports returns the reports in the order of the targets.
func (c *collector) reports(node string) []backends.Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]backends.Report, 0, len(c.targets))
	for _, t := range c.targets {
		r, ok := c.got[t.Name]
		if !ok {
			r = backends.Report{Target: t.Name, Backend: t.Backend, Trigger: policy.KindNATS, DryRun: c.dryRun, Error: "no report"}
		}
		if r.Node == "" {
			r.Node = node
		}
		out = append(out, r)
	}
	return out
}
