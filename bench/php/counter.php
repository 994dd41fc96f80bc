<?php
// The reload counter in PHP, with PHP's own file session handler: what pso is measured against.
ini_set('session.save_path', getenv('PSOSessionFileLoader_Path') ?: sys_get_temp_dir());
ini_set('session.use_strict_mode', '1');
session_start();
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
echo "Hello World! ~ You reloaded: {$_SESSION['n']} times ~ Try Reload !";
