// SPDX-License-Identifier: GPL-2.0

#include <linux/dm-kcopyd.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

#ifdef CONFIG_RUST_DM_ABSTRACTIONS

/*
 * dm_kcopyd_client_destroy() waits for every job of the client, so it must
 * not run in one of the client's own completions (kcopyd's worker). Rust
 * code cannot rule that out: a completion closure may own the last reference
 * to whatever owns the client. So each Rust client comes with a reaper,
 * allocated when the client is created: a client dropped in a work item is
 * handed to the reaper, which destroys it from system_unbound_wq.
 *
 * The deferred destruction returns before the client's jobs completed, and
 * their completions are code of the module that created the client. So the
 * reaper holds a reference to that module from the moment the client is
 * handed over until dm_kcopyd_client_destroy() has returned, which is after
 * every completion (including the one that dropped the client) returned. The
 * reaper itself is vmlinux code, so it may still run after module_put().
 */
struct rust_kcopyd_reaper {
	struct work_struct work;
	struct dm_kcopyd_client *kc;
	/* The module that created the client; NULL for built-in code. */
	struct module *owner;
};

static void rust_kcopyd_reap(struct work_struct *work)
{
	struct rust_kcopyd_reaper *r =
		container_of(work, struct rust_kcopyd_reaper, work);

	dm_kcopyd_client_destroy(r->kc);
	/* No completion of the client can run any more. */
	module_put(r->owner);
	kfree(r);
}

/* Allocates the reaper of a client to be created by @owner (may be NULL). */
void *rust_helper_dm_kcopyd_reaper_alloc(struct module *owner)
{
	struct rust_kcopyd_reaper *r = kzalloc(sizeof(*r), GFP_KERNEL);

	if (r) {
		INIT_WORK(&r->work, rust_kcopyd_reap);
		r->owner = owner;
	}
	return r;
}

void rust_helper_dm_kcopyd_reaper_free(void *r)
{
	kfree(r);
}

/*
 * Destroys @kc and frees @reaper (from rust_helper_dm_kcopyd_reaper_alloc()).
 * Must be called in process context, which includes work items; may sleep.
 * Outside work items, destroys @kc at once, waiting for all its jobs. In a
 * work item (maybe one of @kc's own completions, which waiting would
 * deadlock) returns at once and destroys @kc from system_unbound_wq, holding
 * a reference to the reaper's owner until then. __module_get() does not stop
 * an unload already under way: the owner must not be unloading yet, as for
 * any of its code that runs.
 */
void rust_helper_dm_kcopyd_client_destroy_reaped(void *reaper,
						 struct dm_kcopyd_client *kc)
{
	struct rust_kcopyd_reaper *r = reaper;

	if (current_work()) {
		r->kc = kc;
		__module_get(r->owner);
		queue_work(system_unbound_wq, &r->work);
		return;
	}
	/* current_work() is NULL in interrupt context too: catch that here. */
	might_sleep();
	dm_kcopyd_client_destroy(kc);
	kfree(r);
}

#endif
