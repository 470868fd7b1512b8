"""The live viewer: a pyqtgraph application that shows the maps of a running or finished scan.

``sxdm-stream view --connect tcp://HOST:5560 [--serve tcp://HOST:5561]`` follows a live
processor's snapshots; ``sxdm-stream view results.h5`` shows a results file (and follows it
while a processor rewrites it). The viewer is its own process: a slow GUI never slows the
processing.

Modules, one concern each (as a Qt application is built):

* :mod:`.model` -- the latest maps, statistics and operando history, announced by signals;
* :mod:`.subscriber` -- the thread that receives snapshots (never touches a widget);
* :mod:`.results` -- a results file as a source of snapshots and q-space histograms;
* :mod:`.pixels` -- the processor's pixel service (q-space histogram of one map pixel);
* :mod:`.panels`, :mod:`.inspector`, :mod:`.distributions`, :mod:`.operando`,
  :mod:`.status` -- the widgets;
* :mod:`.window` -- the main window assembling them; :mod:`.app` -- the command line.

Importing this package does not import Qt; its modules do.
"""
