package queen

import (
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rbee-dev/rbee/internal/httpapi"
)

// metrics is the queen's Prometheus registry. Each Server has its own, so
// that tests (and two queens in one process) never share counters.
// Figures that are readings of the fleet (slots, tokens/s, heartbeat lag,
// queue depth) are read at scrape time by fleetCollector, not kept twice.
type metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	ttft        *prometheus.HistogramVec
	queueWait   *prometheus.HistogramVec
	hiveCommand *prometheus.HistogramVec
	// downloadBytes counts bytes fetched by model downloads, by hive.
	downloadBytes *prometheus.CounterVec
}

// latencyBuckets span a fast local call to a slow model load, in seconds.
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rbee_queen_requests_total",
			Help: "Inference requests (completions, chat, embeddings) by model and HTTP status.",
		}, []string{"model", "status"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "rbee_queen_time_to_first_token_seconds",
			Help:    "From a request's arrival to the worker's first byte of answer.",
			Buckets: latencyBuckets,
		}, []string{"model"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "rbee_queen_queue_wait_seconds",
			Help:    "How long a request waited for a free slot (0 when one was free).",
			Buckets: latencyBuckets,
		}, []string{"model"}),
		hiveCommand: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "rbee_queen_hive_command_seconds",
			Help:    "rbee-hive commands run by the queen (over SSH, or locally), by hive and command.",
			Buckets: latencyBuckets,
		}, []string{"hive", "command"}),
	}
	m.downloadBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rbee_queen_download_bytes_total",
		Help: "Bytes fetched by model downloads on hives, by hive (resumed bytes are not counted again).",
	}, []string{"hive"})
	m.reg.MustRegister(m.requests, m.ttft, m.queueWait, m.hiveCommand, m.downloadBytes,
		&fleetCollector{s: s}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// handler serves the registry in Prometheus' text format.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// request counts one finished inference request for model; err is what
// its handler returned.
func (m *metrics) request(model string, err error) {
	status := http.StatusOK
	if err != nil {
		status = httpapi.AsError(err).Status
	}
	if status == http.StatusNotFound {
		model = "" // a name no worker serves: not a label of its own, so clients cannot grow the series
	}
	m.requests.WithLabelValues(model, strconv.Itoa(status)).Inc()
}

// hiveCall records how long one rbee-hive command took on hive.
func (m *metrics) hiveCall(hive string, args []string, d time.Duration) {
	cmd := args[0]
	if len(args) > 1 && (cmd == "worker" || cmd == "model") {
		cmd += " " + args[1]
	}
	m.hiveCommand.WithLabelValues(hive, cmd).Observe(d.Seconds())
}

// firstByte calls onFirst once, when the first bytes are read from r.
type firstByte struct {
	io.ReadCloser
	once    sync.Once
	onFirst func()
}

func (f *firstByte) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if n > 0 {
		f.once.Do(f.onFirst)
	}
	return n, err
}

var (
	descQueueDepth = prometheus.NewDesc("rbee_queen_queue_depth",
		"Requests waiting for a free slot, by model.", []string{"model"}, nil)
	descSlotsBusy = prometheus.NewDesc("rbee_queen_worker_slots_busy",
		"Slots of a worker claimed by requests through this queen.",
		[]string{"worker_id", "model"}, nil)
	descSlotsTotal = prometheus.NewDesc("rbee_queen_worker_slots_total",
		"Slots of a worker.", []string{"worker_id", "model"}, nil)
	descGenRate = prometheus.NewDesc("rbee_queen_worker_generation_tokens_per_second",
		"Generation speed a worker reported in its latest heartbeat.",
		[]string{"worker_id", "model"}, nil)
	descPromptRate = prometheus.NewDesc("rbee_queen_worker_prompt_tokens_per_second",
		"Prompt processing speed a worker reported in its latest heartbeat.",
		[]string{"worker_id", "model"}, nil)
	descHeartbeatLag = prometheus.NewDesc("rbee_queen_worker_heartbeat_age_seconds",
		"Seconds since a worker's latest heartbeat.", []string{"worker_id", "model"}, nil)
)

// fleetCollector reads the router and the latest heartbeats at scrape time.
type fleetCollector struct{ s *Server }

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueueDepth, descSlotsBusy, descSlotsTotal,
		descGenRate, descPromptRate, descHeartbeatLag} {
		ch <- d
	}
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	routes, waiting := c.s.router.snapshot()
	for model, n := range waiting {
		gauge(descQueueDepth, float64(n), model)
	}
	now := time.Now()
	for _, rt := range routes {
		gauge(descSlotsBusy, float64(rt.busy), rt.id, rt.model)
		gauge(descSlotsTotal, float64(rt.slotsTotal), rt.id, rt.model)
		st, at, ok := c.s.live.latest(rt.id)
		if !ok {
			continue
		}
		gauge(descGenRate, st.GenTokensPerSec, rt.id, rt.model)
		gauge(descPromptRate, st.PromptTokensPerSec, rt.id, rt.model)
		gauge(descHeartbeatLag, now.Sub(at).Seconds(), rt.id, rt.model)
	}
}
