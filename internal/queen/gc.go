package queen

// Orphans: worker processes a hive started that the queen does not want
// running. The hive keeps one record per worker it started (`rbee-hive
// worker list`, with whether the process still runs); it cannot tell an
// orphan by itself, since only the queen knows what it wants. So the
// queen asks for the list and compares it with its registry here, and
// `rbee hive gc` stops what it finds with `rbee-hive worker stop`, which
// also removes the record (of a running process, or of one long gone).

import (
	"context"
	"fmt"
	"net/http"
	"sort"

	"github.com/go-chi/chi/v5"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// handleHiveOrphans lists a hive's orphans without touching them.
func (s *Server) handleHiveOrphans(w http.ResponseWriter, r *http.Request) error {
	res, err := s.collectGarbage(r.Context(), chi.URLParam(r, "name"), true)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, res)
	return nil
}

// handleHiveGC stops a hive's orphans and removes the records of dead
// ones; ?dry_run=true only lists them.
func (s *Server) handleHiveGC(w http.ResponseWriter, r *http.Request) error {
	dryRun := r.URL.Query().Get("dry_run") == "true"
	ctx := context.WithoutCancel(r.Context()) // a client that leaves must not half collect
	res, err := s.collectGarbage(ctx, chi.URLParam(r, "name"), dryRun)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, res)
	return nil
}

// collectGarbage finds the orphans of hive name and, unless dryRun, stops
// them one after another. One that cannot be stopped says why in its
// Error; the others are still handled.
func (s *Server) collectGarbage(ctx context.Context, name string,
	dryRun bool) (api.GCResult, error) {
	hive, err := s.hive(ctx, name)
	if err != nil {
		return api.GCResult{}, err
	}
	// The hive's list first, the registry after: a worker spawned in
	// between has its row written before its record, so it is never
	// taken for an orphan.
	var list api.HiveWorkerList
	if err := s.hives.run(ctx, hive, []string{"worker", "list"}, "", &list); err != nil {
		return api.GCResult{}, err
	}
	rows, err := s.store.Workers(ctx, true)
	if err != nil {
		return api.GCResult{}, err
	}
	known := make(map[string]registry.Worker, len(rows))
	for _, wk := range rows {
		known[wk.ID] = wk
	}

	res := api.GCResult{Hive: hive.Name, DryRun: dryRun,
		Orphans: findOrphans(hive.Name, list.Workers, known)}
	if dryRun {
		return res, nil
	}
	for i := range res.Orphans {
		s.collect(ctx, hive, &res.Orphans[i], known)
	}
	return res, nil
}

// findOrphans picks, among a hive's records, those of processes the queen
// does not want running, sorted by id.
func findOrphans(hive string, records []api.HiveWorker,
	known map[string]registry.Worker) []api.Orphan {
	orphans := []api.Orphan{}
	for _, rec := range records {
		row, ok := known[rec.ID]
		reason := orphanReason(hive, rec, row, ok)
		if reason == "" {
			continue
		}
		action := api.OrphanRemoveRecord
		if rec.Alive {
			action = api.OrphanStop
		}
		orphans = append(orphans, api.Orphan{HiveWorker: rec, Reason: reason, Action: action})
	}
	sort.Slice(orphans, func(i, j int) bool { return orphans[i].ID < orphans[j].ID })
	return orphans
}

// orphanReason says why the hive's record rec is an orphan, or "" when
// the queen wants it (row, when known is set). The record of a process
// that ended is no orphan while the restart policy will start it again
// (the restart stops it, which removes the record), or while the queen has
// not seen it end yet: gc's own `worker stop` could otherwise land just
// after the restart started the new process under the same id.
//
// Shortcoming: the hive's record carries no token, so a process started
// under an id the queen knows, with a token it does not, is only caught
// when its pid differs from the one the queen recorded.
//
// The hive may flag a record as an orphan itself (rec.Orphan): its worker
// wrote that the queen it heartbeats to answers 404. Only a queen with no
// row for it can have said that, so a row here means the flag is stale
// (the worker has not beaten since) or names another queen: the rules
// below decide, and a worker this queen wants running is never stopped.
func orphanReason(hive string, rec api.HiveWorker, row registry.Worker, known bool) string {
	switch {
	case !known && rec.Orphan:
		return "the queen has no worker " + rec.ID + ", and the hive reports: " +
			rec.OrphanReason
	case !known:
		return "the queen has no worker " + rec.ID + " (its row was removed, or its " +
			"database was reset)"
	case row.Desired == registry.DesiredStopped:
		return fmt.Sprintf("the queen wants it stopped (its state: %s)", row.State)
	case row.Hive != hive:
		// Ids are random, so the same id on two hives is one state
		// directory seen through two hive names (one machine added
		// twice): the process is the other hive's wanted worker.
		return ""
	case row.State == api.WorkerStopped && restartReason(row) == "":
		return fmt.Sprintf("the queen saw it stop (its state: %s) and will not start it again",
			row.State)
	case rec.Alive && row.PID != 0 && row.PID != rec.PID:
		return fmt.Sprintf("pid %d runs, but the queen knows worker %s as pid %d", rec.PID,
			rec.ID, row.PID)
	case !rec.Alive && ended(row.State) && restartReason(row) == "":
		return fmt.Sprintf("its process ended (%s), and the queen will not start it again",
			row.State)
	}
	return ""
}

// ended reports whether the queen saw a worker's process end.
func ended(state api.WorkerState) bool {
	return state == api.WorkerLost || state == api.WorkerFailed || state == api.WorkerStopped
}

// collect stops one orphan with `rbee-hive worker stop`, which also
// removes its record, and records the queen's worker as stopped when it
// wanted it stopped but had not seen it end.
func (s *Server) collect(ctx context.Context, hive registry.Hive, o *api.Orphan,
	known map[string]registry.Worker) {
	var res api.StopResult
	err := s.hives.run(ctx, hive, []string{"worker", "stop", o.ID,
		"--timeout", stopTimeout.String()}, "", &res)
	if err != nil && httpapi.AsError(err).Status != http.StatusNotFound {
		o.Error = httpapi.AsError(err).Message
		s.log.Warn("stop orphan", "worker_id", o.ID, "hive", hive.Name, "error", err)
		return
	}
	o.Done = true
	s.log.Info("orphan collected", "worker_id", o.ID, "hive", hive.Name, "pid", o.PID,
		"action", o.Action, "reason", o.Reason)
	if o.Action != api.OrphanStop {
		return
	}
	// A row still wanted running (its pid differs) is left to its
	// heartbeat deadline and restart policy.
	row, ok := known[o.ID]
	if ok && row.Hive == hive.Name && row.Desired == registry.DesiredStopped &&
		row.State != api.WorkerStopped {
		s.forget(o.ID)
		if err := s.setWorkerState(ctx, o.ID, api.WorkerStopped, ""); err != nil {
			s.log.Warn("record orphan stopped", "worker_id", o.ID, "error", err)
		}
	}
	s.workerEvent(o.ID, hive.Name, o.Model, api.WorkerStopped, "orphan stopped by gc: "+o.Reason)
}
