package workerd

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// workerMetrics is the worker's Prometheus registry, served at /metrics
// behind the worker's token. Token counts and slots are read from the
// engine at scrape time; requests and time to first token are counted by
// the completion handler.
type workerMetrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	ttft     prometheus.Histogram
}

func newWorkerMetrics(w *worker) *workerMetrics {
	m := &workerMetrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rbee_worker_requests_total",
			Help: "Completion and embedding requests, by route and HTTP status.",
		}, []string{"route", "status"}),
		ttft: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "rbee_worker_time_to_first_token_seconds",
			Help:    "From a completion request's arrival to its first generated text.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	m.reg.MustRegister(m.requests, m.ttft, engineCollector{w: w},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *workerMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// count wraps a handler, counting each request by the status it ended with.
func (m *workerMetrics) count(route string, next httpapi.HandlerFunc) httpapi.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) error {
		err := next(rw, r)
		status := http.StatusOK
		if err != nil {
			status = httpapi.AsError(err).Status
		}
		m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
		return err
	}
}

// firstText observes the time to first token once per request.
type firstText struct {
	once  sync.Once
	start time.Time
	h     prometheus.Histogram
}

func (f *firstText) seen() {
	f.once.Do(func() { f.h.Observe(time.Since(f.start).Seconds()) })
}

var (
	descPromptTokens = prometheus.NewDesc("rbee_worker_prompt_tokens_total",
		"Prompt tokens processed.", nil, nil)
	descGenTokens = prometheus.NewDesc("rbee_worker_generated_tokens_total",
		"Tokens generated.", nil, nil)
	descSlotsBusy = prometheus.NewDesc("rbee_worker_slots_busy",
		"Slots decoding a request now.", nil, nil)
	descSlotsTotal = prometheus.NewDesc("rbee_worker_slots_total",
		"Slots of this worker (--slots).", nil, nil)
	descReady = prometheus.NewDesc("rbee_worker_ready",
		"1 while the worker takes requests.", nil, nil)
)

// engineCollector reads the engine's own counters at scrape time.
type engineCollector struct{ w *worker }

func (c engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPromptTokens, descGenTokens, descSlotsBusy,
		descSlotsTotal, descReady} {
		ch <- d
	}
}

func (c engineCollector) Collect(ch chan<- prometheus.Metric) {
	state, _, eng := c.w.snapshot()
	ready := 0.0
	if state == api.WorkerReady {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, ready)
	ch <- prometheus.MustNewConstMetric(descSlotsTotal, prometheus.GaugeValue,
		float64(c.w.cfg.Slots))
	if eng == nil {
		return
	}
	st := eng.Stats()
	ch <- prometheus.MustNewConstMetric(descPromptTokens, prometheus.CounterValue,
		float64(st.PromptTokens))
	ch <- prometheus.MustNewConstMetric(descGenTokens, prometheus.CounterValue,
		float64(st.GeneratedTokens))
	ch <- prometheus.MustNewConstMetric(descSlotsBusy, prometheus.GaugeValue,
		float64(st.SlotsBusy))
}
