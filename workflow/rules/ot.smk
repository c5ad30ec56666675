# Rules of the 'ot' stage (see README, 'Workflow').
