# Rules of the 'report' stage (see README, 'Workflow').
