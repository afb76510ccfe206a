// SPDX-License-Identifier: GPL-2.0

#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

/*
 * destroy_workqueue() drains the queue, so it must not run in one of the
 * queue's own work items. Rust code cannot rule that out (a work item may
 * own the last reference to the owner of its queue), so each Rust-owned queue
 * comes with a reaper, allocated with the queue: a queue dropped in a work
 * item is destroyed from system_unbound_wq instead.
 *
 * The deferred destruction returns before the queue's work items ran, and
 * they are code of the module that created the queue. So the reaper holds a
 * reference to that module from the moment the queue is handed over until
 * destroy_workqueue() has returned, which is after every work item of the
 * queue (including the one that dropped it) returned. The reaper itself is
 * vmlinux code, so it may still run after module_put().
 */
struct rust_wq_reaper {
	struct work_struct work;
	struct workqueue_struct *wq;
	/* The module that created the queue; NULL for built-in code. */
	struct module *owner;
};

static void rust_wq_reap(struct work_struct *work)
{
	struct rust_wq_reaper *r = container_of(work, struct rust_wq_reaper, work);

	destroy_workqueue(r->wq);
	/* No work item of the queue can run any more. */
	module_put(r->owner);
	kfree(r);
}

/* Allocates the reaper of a queue to be created by @owner (may be NULL). */
void *rust_helper_wq_reaper_alloc(struct module *owner)
{
	struct rust_wq_reaper *r = kzalloc(sizeof(*r), GFP_KERNEL);

	if (r) {
		INIT_WORK(&r->work, rust_wq_reap);
		r->owner = owner;
	}
	return r;
}

void rust_helper_wq_reaper_free(void *r)
{
	kfree(r);
}

/*
 * Destroys @wq and frees @reaper (from rust_helper_wq_reaper_alloc()). Must
 * be called in process context, which includes work items; may sleep.
 * Outside work items, destroys @wq at once, draining it. In a work item
 * (maybe one of @wq's own, which draining would deadlock) returns at once and
 * destroys @wq from system_unbound_wq, holding a reference to the reaper's
 * owner until then. __module_get() does not stop an unload already under
 * way: the owner must not be unloading yet, as for any of its code that runs.
 */
void rust_helper_destroy_workqueue_reaped(void *reaper,
					  struct workqueue_struct *wq)
{
	struct rust_wq_reaper *r = reaper;

	if (current_work()) {
		r->wq = wq;
		__module_get(r->owner);
		queue_work(system_unbound_wq, &r->work);
		return;
	}
	/* current_work() is NULL in interrupt context too: catch that here. */
	might_sleep();
	destroy_workqueue(wq);
	kfree(r);
}
