"""Imported first by a worker's preload (:data:`distml.runtime.threads.PRELOAD_FIRST`): the
modules preloaded after it start their thread pools at one thread, as Ray's 1-CPU tasks do; on
the warm cluster, where it is the whole preload, a worker prestarted for no job then imports
the warm cluster's modules (:func:`distml.runtime.warm_workers.warm_preload`)."""

from distml.runtime.threads import preload_defaults
from distml.runtime.warm_workers import warm_preload

preload_defaults()
warm_preload()
