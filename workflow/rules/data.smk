# Rules of the 'data' stage (see README, 'Workflow').
