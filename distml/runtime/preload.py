"""Imported first by a worker's preload (:data:`distml.runtime.threads.PRELOAD_FIRST`): the
modules preloaded after it start their thread pools at one thread, as Ray's 1-CPU tasks do."""

from distml.runtime.threads import preload_defaults

preload_defaults()
