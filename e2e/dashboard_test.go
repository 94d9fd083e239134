package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"gotest.tools/v3/assert"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
)

// chromiumPath is the Debian chromium that scripts/install-test-deps.sh
// installs.
const chromiumPath = "/usr/bin/chromium"

// browser starts a headless Chromium with a throwaway profile and returns
// a context for driving one tab; it ends with the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("%s not found: run scripts/install-test-deps.sh (it installs chromium)",
			chromiumPath)
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1100),
	)
	ctx, cancelTab := chromedp.NewContext(alloc)
	ctx, cancelTimeout := context.WithTimeout(ctx, 4*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancelTab(); cancelAlloc() })
	return ctx
}

// pageRow is one row of the dashboard's worker table.
type pageRow struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

// workerRows reads the worker table as the page shows it.
func workerRows(t *testing.T, ctx context.Context) []pageRow {
	t.Helper()
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[[]pageRow](`[...document.querySelectorAll(
		"#workers tbody tr")].map(r => ({id: r.dataset.workerId, state: r.dataset.state}))`))
	assert.NilError(t, err)
	return rows
}

// waitForRows polls the page until ok accepts its worker rows.
func waitForRows(t *testing.T, ctx context.Context, what string, ok func([]pageRow) bool) {
	t.Helper()
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		rows := workerRows(t, ctx)
		if ok(rows) {
			return poll.Success()
		}
		return poll.Continue("waiting for %s; the page shows %v", what, rows)
	}, poll.WithTimeout(90*time.Second), poll.WithDelay(100*time.Millisecond))
}

// waitForText polls the page until the element at sel reads want.
func waitForText(t *testing.T, ctx context.Context, sel, want string) {
	t.Helper()
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		got, err := chromedp.Run(ctx, chromedp.Evaluate[string](
			`document.querySelector(`+strconv.Quote(sel)+`)?.textContent ?? "(absent)"`))
		if err != nil {
			return poll.Error(err)
		}
		if strings.TrimSpace(got) == want {
			return poll.Success()
		}
		return poll.Continue("waiting for %s to read %q; it reads %q", sel, want, got)
	}, poll.WithTimeout(90*time.Second), poll.WithDelay(100*time.Millisecond))
}

func hasReady(rows []pageRow, id string) bool {
	return slices.Contains(rows, pageRow{ID: id, State: string(api.WorkerReady)})
}

func TestDashboardShowsTheFleetLiveAndSpawns(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: 300 * time.Millisecond})
	first := c.spawn()
	ctx := browser(t)

	// The page loads and lists the worker; a marker on window shows later
	// that the page was never reloaded.
	assert.NilError(t, chromedp.Do(ctx,
		chromedp.Navigate(c.url+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#workers tr[data-worker-id="`+first.ID+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#hives [data-hive="localhost"]`)),
	))
	_, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.rbeeTestMarker = 1`))
	assert.NilError(t, err)
	waitForRows(t, ctx, "the first worker ready", func(rows []pageRow) bool {
		return hasReady(rows, first.ID)
	})

	// A worker spawned elsewhere appears live.
	second := c.spawn()
	waitForRows(t, ctx, "the CLI's worker", func(rows []pageRow) bool {
		return hasReady(rows, second.ID)
	})

	// A worker spawned from the page's form becomes ready.
	assert.NilError(t, chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS(`#spawn-model`), c.model.Path),
		chromedp.SetValue(chromedp.CSS(`#spawn-slots`), "1"),
		chromedp.Click(chromedp.CSS(`#spawn-submit`)),
	))
	var third string
	waitForRows(t, ctx, "a third worker ready", func(rows []pageRow) bool {
		for _, r := range rows {
			if r.ID != first.ID && r.ID != second.ID && r.State == string(api.WorkerReady) {
				third = r.ID
				return true
			}
		}
		return false
	})
	assert.Equal(t, c.worker(third).State, api.WorkerReady, "the queen agrees with the page")

	// A deployment created from the page's form with no replicas, scaled
	// to one from its row, becomes ready 1/1.
	const deployRow = `#deployments tr[data-deployment="dash"]`
	assert.NilError(t, chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS(`#deploy-model`), c.model.Path),
		chromedp.SetValue(chromedp.CSS(`#deploy-name`), "dash"),
		chromedp.SetValue(chromedp.CSS(`#deploy-replicas`), "0"),
		chromedp.Click(chromedp.CSS(`#deploy-submit`)),
		chromedp.WaitVisible(chromedp.CSS(deployRow+`[data-ready="0/0"]`)),
		chromedp.SetValue(chromedp.CSS(deployRow+` input.replicas`), "1"),
		chromedp.Click(chromedp.CSS(deployRow+` button[type="submit"]`)),
	))
	waitForText(t, ctx, deployRow+` td.ready`, "1/1")
	d := c.deployment("dash")
	assert.Equal(t, d.Ready, 1, "the queen agrees with the page")
	assert.Equal(t, d.Slots, 1)

	marker, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.rbeeTestMarker`))
	assert.NilError(t, err)
	errorsShown, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`[...document.querySelectorAll("#messages .msg-error")].map(m => m.textContent)`))
	assert.NilError(t, err)
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	assert.NilError(t, err)

	// Removing it from the page (past its confirm) drains its worker.
	_, err = chromedp.Run(ctx, chromedp.Evaluate[bool](`window.confirm = () => true; true`))
	assert.NilError(t, err)
	assert.NilError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(deployRow+` button.danger`)),
		chromedp.WaitVisible(chromedp.CSS(`#deployments-empty`)),
	))
	// The hive's card looks for orphans on request.
	assert.NilError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#hives [data-hive="localhost"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`#hives [data-hive="localhost"] dd[data-orphans]`)),
	))

	var list api.DeploymentList
	c.getJSON("/v1/deployments", &list)
	assert.Equal(t, len(list.Deployments), 0, "the queen still has %v", list.Deployments)
	var workers api.WorkerList
	c.getJSON("/v1/workers", &workers)
	for _, w := range workers.Workers {
		assert.Check(t, w.ID != d.Workers[0] || w.State != api.WorkerReady,
			"the deployment's worker %s still serves", w.ID)
	}
	assert.Equal(t, marker, 1, "the page was reloaded")
	assert.Equal(t, len(errorsShown), 0, "the page shows errors: %v", errorsShown)

	assert.NilError(t, os.MkdirAll("artifacts", 0o755))
	assert.NilError(t, os.WriteFile(filepath.Join("artifacts", "dashboard.png"), png, 0o644))
}

func TestDashboardAsksForAKeyAndUsesIt(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: 300 * time.Millisecond})
	w := c.spawn()
	key := strings.TrimSpace(c.mustRbee("key", "create", "--name", "admin", "--scope", "admin"))
	ctx := browser(t)

	// Without a key the page asks for one; with it, the data and the live
	// stream (key as a WebSocket subprotocol) work.
	assert.NilError(t, chromedp.Do(ctx,
		chromedp.Navigate(c.url+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#key-panel`)),
		chromedp.SetValue(chromedp.CSS(`#key-input`), key),
		chromedp.Click(chromedp.CSS(`#key-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#workers tr[data-worker-id="`+w.ID+`"]`)),
		chromedp.WaitNotVisible(chromedp.CSS(`#key-panel`)),
	))
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		conn, err := chromedp.Run(ctx, chromedp.Evaluate[string](
			`document.getElementById("conn").textContent`))
		if err != nil {
			return poll.Error(err)
		}
		if conn == "live" {
			return poll.Success()
		}
		return poll.Continue("the event stream is %q", conn)
	}, poll.WithTimeout(30*time.Second), poll.WithDelay(100*time.Millisecond))

	stored, err := chromedp.Run(ctx, chromedp.Evaluate[string](
		`sessionStorage.getItem("rbee.key")`))
	assert.NilError(t, err)
	assert.Equal(t, stored, key)
	assert.Check(t, !strings.Contains(c.queenLog.String(), key), "the queen logged the key")
}
